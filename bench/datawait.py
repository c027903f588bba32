"""How long the GPU waits for data in the `ft` recipe: loader wait as a share of the training step.

The ScanNet `ft` recipe (configs/sonata/semseg-sonata-v1m1-0c-scannet-ft.py: 18 train transforms, Mix3D 0.8, fp16 AMP,
AdamW with its lr groups) reads generated demo rooms at ScanNet density (2 cm spacing, ~170k points each) through the
trainer's own loader pieces (sample-seeded dataset, batch-seeded Mix3D collate, persistent workers, pinned memory).
Each step is timed in two parts: `wait`, the time blocked in `next(loader)` plus the host-to-device copy, and
`compute`, forward + backward + optimizer step until the GPU is done. The first `workers` steps (at most 16, at least 3) are not
timed (the workers' start and first batches; the steady state starts after). Reported per variant (loader workers, native
threads per worker): medians, the wait share `sum(wait) / sum(wait + compute)` over the timed steps, and each step's
times; and `compute_alone_s`, the step on one resident batch with no loader running (what the loader's CPU load costs
the step itself).

Loader modes: `epoch`, a new pass of the loader each epoch (the trainer before `EpochBatches`: the workers only get
the next epoch's indices once this one is done, so the first step of an epoch waits for a whole batch), and `stream`,
one pass over all epochs (the trainer now: workers prefetch across the boundary). With 24 rooms and `loop` 8 an
epoch is 8 steps, so the boundary weighs far more here than at ScanNet scale (400 steps a cycle).

`timeline` holds one row per step: the batch's epoch and worker, when the worker started and finished it (relative
to the variant's start), its samples' transform times, its collate time and size, and the main process's wait,
host-to-device copy and compute. `compute_varied_s` is the step on 4 resident batches of the run cycled with no
loader running (new shapes each step, as in the run; `compute_alone_s` repeats one batch).

    python bench/datawait.py --json bench/results/datawait_h200.json          # GPU: recipe batch and workers
    python bench/datawait.py --tiny                                           # CPU check: tiny model, small rooms
"""
import argparse, collections, json, os, statistics, sys, time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, get_worker_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`
from sonata_nb.config import default_config_parser
from sonata_nb.datasets import build_dataset, point_collate_fn
from sonata_nb.demo import make_demo_data
from sonata_nb.runtime import to_device, to_plain
from sonata_nb.segmentor import build_model
from sonata_nb.trainer import (BatchSeeded, EpochBatches, EpochSampler, SampleSeeded, SeededBatch, amp_setup,
                               build_optimizer, worker_init_fn)
from threadpoolctl import threadpool_limits

CONFIG = ROOT/"configs"/"sonata"/"semseg-sonata-v1m1-0c-scannet-ft.py"
TINY_BACKBONE = dict(enc_depths=(1, 1, 1, 1, 1), enc_channels=(8, 8, 16, 16, 32), enc_num_head=(1, 1, 2, 2, 4),
                     enc_patch_size=(64,) * 5, dec_depths=(1, 1, 1, 1), dec_channels=(8, 8, 16, 16),
                     dec_num_head=(1, 1, 2, 2), dec_patch_size=(64,) * 4)


def recipe(data_root:Path, spacing:float, n_train:int, tiny:bool):
    "The ft recipe reading demo rooms (and a narrow model with --tiny)"
    opts = ["enable_wandb=False", "data.train.type=DemoDataset", f"data.train.data_root={data_root}",
            f"data.train.spacing={spacing}", f"data.train.n_train={n_train}", "data.train.n_val=1"]
    if tiny:
        opts += [f"model.backbone.{k}={v}".replace(" ", "") for k, v in TINY_BACKBONE.items()]
        opts += ["model.backbone_out_channels=8"]
    return default_config_parser(CONFIG, opts)


def _worker_init(worker_id:int, threads:int|None, nice:int=0, **kwargs):
    "The trainer's worker set-up (one native thread), then `threads` native threads (None: the trainer's choice)"
    worker_init_fn(worker_id, **kwargs)
    if threads: threadpool_limits(threads)  # e.g. one per core: how workers ran before worker_init_fn limited them
    if nice: os.nice(nice)  # the main process (CUDA launches, pinning) first when the cores are busy


class TimedSamples(SampleSeeded):
    "The trainer's sample-seeded dataset, timing each sample's transforms (in the worker)"
    def __getitems__(self, keys):
        t0, times, samples = time.monotonic(), [], []
        for k in keys:
            t = time.monotonic(); samples.append(self[k]); times.append(time.monotonic() - t)
        batch = SeededBatch(samples, keys); batch.timing = dict(fetch_start=t0, sample_s=times); return batch


class TimedCollate:
    "The trainer's batch-seeded collate, adding `_timing` (worker, epoch, fetch/collate times, bytes) to the batch"
    def __init__(self, collate): self.collate = collate
    def __call__(self, batch):
        t0 = time.monotonic(); out = self.collate(batch); t1 = time.monotonic()
        info = get_worker_info()
        nbytes = sum(v.numel() * v.element_size() for v in out.values() if isinstance(v, torch.Tensor))
        out["_timing"] = dict(getattr(batch, "timing", {}), collate_start=t0, collate_end=t1, bytes=nbytes,
                              worker=info.id if info else -1, epoch=batch.sample_keys[0][0], pid=os.getpid())
        return out


def loader(cfg, workers:int, batch:int, threads:int|None, nice:int=0, seed:int=0) -> DataLoader:
    "The trainer's train loader for one process: shuffled, sample-seeded, Mix3D in the batch-seeded collate"
    data = build_dataset(to_plain(cfg.data.train))
    sampler = EpochSampler(data, num_replicas=1, rank=0, shuffle=True, seed=seed)
    collate = TimedCollate(BatchSeeded(partial(point_collate_fn, mix_prob=cfg.get("mix_prob", 0)), seed))
    return DataLoader(TimedSamples(data, seed), batch_sampler=EpochBatches(sampler, batch, drop_last=True),
                      num_workers=workers, collate_fn=collate, pin_memory=torch.cuda.is_available(),
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
                      worker_init_fn=partial(_worker_init, threads=threads, nice=nice, num_workers=workers, rank=0,
                                             seed=seed))


def step(model, optimizer, b, amp, dtype, scaler, clip_grad):
    "One optimizer step of the recipe: forward under autocast, backward, unscale, clip, step"
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(b["coord"].device.type, dtype=dtype, enabled=amp):
        loss = model(b)["loss"]
    (scaler.scale(loss) if scaler else loss).backward()
    if scaler: scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if scaler: scaler.step(optimizer); scaler.update()
    else: optimizer.step()
    return loss.detach()


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def measure(cfg, workers:int, threads:int|None, mode:str, main_threads:int, nice:int, batch:int, steps:int,
            device, sleep:float|None=None) -> dict:
    "Wait and compute of `steps` steps after `workers` untimed ones; `mode` 'epoch' (a pass per epoch) or 'stream'"
    torch.set_num_threads(main_threads)
    if sleep:  # the loader alone: a fixed-length idle step stands for the GPU's work
        run = lambda b: (time.sleep(sleep), torch.zeros(()))[1]
    else:
        model = build_model(cfg.model).to(device).train()
        optimizer = build_optimizer(cfg.optimizer, model, cfg.get("param_dicts"))
        amp, dtype, scaler = amp_setup(cfg.get("enable_amp", False), cfg.get("amp_dtype", "float16"), device)
        run = lambda b: step(model, optimizer, b, amp, dtype, scaler, cfg.clip_grad)
    batches = loader(cfg, workers, batch, threads, nice)
    if mode == "stream": batches.batch_sampler.until = 10**6  # one pass over all epochs, as Trainer.epoch_batches
    t_start = time.monotonic()
    it, epoch, waits, computes, timeline, resident = iter(batches), 0, [], [], [], collections.deque(maxlen=4)
    warmup = max(min(workers, 16), 3)  # 48 workers fill their queue within a few steps of 16 cores
    for i in range(warmup + steps):
        t0 = time.monotonic()
        try: b = next(it)
        except StopIteration:  # 'epoch' mode: the trainer's old loop, a new pass each epoch
            epoch += 1; batches.batch_sampler.sampler.set_epoch(epoch); it = iter(batches); b = next(it)
        t_got = time.monotonic()
        timing = b.pop("_timing")
        b = to_device(b, device); sync(device)
        t1 = time.monotonic()
        loss = run(b); sync(device)
        t2 = time.monotonic()
        resident.append(b)
        if i >= warmup: waits.append(t1 - t0); computes.append(t2 - t1)
        ms = lambda t: round((t - t_start) * 1e3, 1)
        timeline.append(dict(
            step=i, timed=i >= warmup, epoch=timing["epoch"], worker=timing["worker"], t_ms=ms(t0),
            wait_ms=round((t_got - t0) * 1e3, 1), h2d_ms=round((t1 - t_got) * 1e3, 1), compute_ms=round((t2 - t1) * 1e3, 1),
            built_from_ms=ms(timing["fetch_start"]), built_to_ms=ms(timing["collate_end"]),
            ready_before_ms=round((t_got - timing["collate_end"]) * 1e3, 1),
            samples_ms=round(sum(timing["sample_s"]) * 1e3, 1), sample_max_ms=round(max(timing["sample_s"]) * 1e3, 1),
            collate_ms=round((timing["collate_end"] - timing["collate_start"]) * 1e3, 1),
            mb=round(timing["bytes"] / 2**20, 1)))
    wall = time.monotonic() - t_start
    del it, batches  # the workers stop
    alone, varied = [], []
    for _ in range(4):
        t0 = time.monotonic(); run(b); sync(device)
        alone.append(time.monotonic() - t0)
    for k in range(2 * len(resident)):  # new shapes each step, as with the loader, but no worker running
        t0 = time.monotonic(); run(resident[k % len(resident)])
        sync(device); varied.append(time.monotonic() - t0)
    timed = [r for r in timeline if r["timed"]]
    return dict(workers=workers, worker_threads=threads or "default", mode=mode, main_threads=main_threads,
                worker_nice=nice, batch=batch, steps=steps,
                wait_s=statistics.median(waits), compute_s=statistics.median(computes),
                wait_share=sum(waits) / (sum(waits) + sum(computes)), max_wait_s=max(waits),
                compute_alone_s=statistics.median(alone[1:]), compute_varied_s=statistics.median(varied),
                batch_build_s=statistics.median(r["samples_ms"] + r["collate_ms"] for r in timed) / 1e3,
                sample_s=statistics.median(r["samples_ms"] for r in timed) / 1e3 / batch,
                collate_s=statistics.median(r["collate_ms"] for r in timed) / 1e3,
                batch_mb=statistics.median(r["mb"] for r in timed),
                waits_at_epoch_start_s=sum(w for w, r in zip(waits, timed) if r["epoch"] != timeline[r["step"] - 1]["epoch"]),
                points_per_batch=int(b["coord"].shape[0]), wall_s=wall, loss=loss.item(),
                peak_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                timeline=timeline)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+",
                   default=["16:default:epoch", "16:default:stream", "16:default:stream:default:10", "48:default:stream"],
                   help="WORKERS:THREADS[:MODE[:MAIN[:NICE]]]: loader workers, native threads per worker ('default': the "
                        "trainer's, 1), loader mode 'epoch' (a pass per epoch, the trainer before) or 'stream' (default, "
                        "the trainer now), torch threads of the main process ('default': torch's), workers' niceness (0)")
    p.add_argument("--batch", type=int, default=None, help="scenes per step (default: the recipe's batch_size)")
    p.add_argument("--rooms", type=int, default=24, help="generated training rooms")
    p.add_argument("--spacing", type=float, default=0.02, help="surface sampling step of the rooms (m)")
    p.add_argument("--steps", type=int, default=30, help="timed steps (after one untimed step per worker, 3 to 16)")
    p.add_argument("--data", default="/tmp/sonata_nb_datawait", help="where the rooms are generated (once)")
    p.add_argument("--sleep", type=float, help="no model: each step sleeps this long (the loader's dynamics on a CPU)")
    p.add_argument("--tiny", action="store_true", help="CPU check: narrow model, 2 rooms at 15 cm, 2 workers, 10 steps")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    if args.tiny:  # 8 steps an epoch: one boundary timed; 1 torch thread (2 threads on 2 loaded cores thrash)
        args.rooms, args.spacing, args.steps, args.variants = 2, 0.15, 10, ["2:default:epoch:1", "2:default:stream:1"]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    t0 = time.perf_counter()
    root = make_demo_data(Path(args.data) / f"rooms{args.rooms}_{args.spacing}", args.rooms, 1, spacing=args.spacing)
    gen_s = time.perf_counter() - t0
    cfg = recipe(root, args.spacing, args.rooms, args.tiny)
    batch = args.batch or (2 if args.tiny else cfg.batch_size)
    rows, default_threads = [], torch.get_num_threads()
    for v in args.variants:
        parts = v.split(":")
        if not 2 <= len(parts) <= 5: raise ValueError(f"--variants {v}: expected WORKERS:THREADS[:MODE[:MAIN[:NICE]]]")
        w, threads, mode, main_threads, nice = parts + ["stream", "default", "0"][len(parts) - 2:]
        w, threads, nice = int(w), None if threads == "default" else int(threads), int(nice)
        main_threads = default_threads if main_threads == "default" else int(main_threads)
        if mode not in ("epoch", "stream"): raise ValueError(f"--variants {v}: mode must be 'epoch' or 'stream'")
        while True:
            try:
                rows.append(measure(cfg, w, threads, mode, main_threads, nice, batch, args.steps, device, args.sleep))
                break
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache(); batch //= 2
                print(f"batch does not fit, halving to {batch}", file=sys.stderr)
                if batch < 1: raise
        r = rows[-1]
        print(f"workers {w:3d} threads {r['worker_threads']} {mode:6s} main threads {main_threads} nice {nice} "
              f"batch {r['batch']}: wait {r['wait_s'] * 1e3:7.1f} ms, "
              f"compute {r['compute_s'] * 1e3:7.1f} ms (alone {r['compute_alone_s'] * 1e3:7.1f}, "
              f"varied {r['compute_varied_s'] * 1e3:7.1f}), wait share {100 * r['wait_share']:5.1f} %, "
              f"max wait {r['max_wait_s']:.2f} s, at epoch starts {r['waits_at_epoch_start_s']:.2f} s; "
              f"batch build {r['batch_build_s']:.2f} s ({r['sample_s'] * 1e3:.0f} ms/sample, collate "
              f"{r['collate_s'] * 1e3:.0f} ms, {r['batch_mb']:.0f} MB); wall {r['wall_s']:.0f} s", flush=True)
        out = dict(command=" ".join(["python", *(Path(a).name if os.path.isabs(a) else a for a in sys.argv)]), config=CONFIG.name,
                   device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   cpu_cores=os.cpu_count(), rooms=args.rooms, spacing=args.spacing, generate_s=gen_s, results=rows,
                   torch=torch.__version__, date=time.strftime("%Y-%m-%d"))
        if args.json: Path(args.json).write_text(json.dumps(out, indent=1))  # after each variant: a cut run keeps its rows
    return out


if __name__ == "__main__":
    main()
