"""How long the GPU waits for data in the `ft` recipe: loader wait as a share of the training step.

The ScanNet `ft` recipe (configs/sonata/semseg-sonata-v1m1-0c-scannet-ft.py: 18 train transforms, Mix3D 0.8, fp16 AMP,
AdamW with its lr groups) reads generated demo rooms at ScanNet density (2 cm spacing, ~170k points each) through the
trainer's own loader pieces (sample-seeded dataset, batch-seeded Mix3D collate, persistent workers, pinned memory).
Each step is timed in two parts: `wait`, the time blocked in `next(loader)` plus the host-to-device copy, and
`compute`, forward + backward + optimizer step until the GPU is done. The first `workers` steps are not timed (every
worker delivers its first batch then; the steady state starts after). Reported per variant (loader workers, native
threads per worker): medians, the wait share `sum(wait) / sum(wait + compute)` over the timed steps, and each step's
times; and `compute_alone_s`, the step on one resident batch with no loader running (what the loader's CPU load costs
the step itself).

    python bench/datawait.py --json bench/results/datawait_h200.json          # GPU: recipe batch and workers
    python bench/datawait.py --tiny                                           # CPU check: tiny model, small rooms
"""
import argparse, json, os, statistics, sys, time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`
from sonata_nb.config import default_config_parser
from sonata_nb.datasets import build_dataset, point_collate_fn
from sonata_nb.demo import make_demo_data
from sonata_nb.runtime import to_device, to_plain
from sonata_nb.segmentor import build_model
from sonata_nb.trainer import BatchSeeded, EpochSampler, SampleSeeded, amp_setup, build_optimizer, worker_init_fn
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


def _worker_init(worker_id:int, threads:int|None, **kwargs):
    "The trainer's worker set-up (one native thread), then `threads` native threads (None: the trainer's choice)"
    worker_init_fn(worker_id, **kwargs)
    if threads: threadpool_limits(threads)  # e.g. one per core: how workers ran before worker_init_fn limited them


def loader(cfg, workers:int, batch:int, threads:int|None, seed:int=0) -> DataLoader:
    "The trainer's train loader for one process: shuffled, sample-seeded, Mix3D in the batch-seeded collate"
    data = build_dataset(to_plain(cfg.data.train))
    sampler = EpochSampler(data, num_replicas=1, rank=0, shuffle=True, seed=seed)
    collate = BatchSeeded(partial(point_collate_fn, mix_prob=cfg.get("mix_prob", 0)), seed)
    return DataLoader(SampleSeeded(data, seed), batch_size=batch, sampler=sampler, num_workers=workers,
                      collate_fn=collate, pin_memory=torch.cuda.is_available(), drop_last=True,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
                      worker_init_fn=partial(_worker_init, threads=threads, num_workers=workers, rank=0, seed=seed))


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


def measure(cfg, workers:int, threads:int|None, batch:int, steps:int, device) -> dict:
    "Wait and compute of `steps` steps after `workers` untimed ones, with `threads` native threads per worker"
    model = build_model(cfg.model).to(device).train()
    optimizer = build_optimizer(cfg.optimizer, model, cfg.get("param_dicts"))
    amp, dtype, scaler = amp_setup(cfg.get("enable_amp", False), cfg.get("amp_dtype", "float16"), device)
    batches = loader(cfg, workers, batch, threads)
    it, epoch, waits, computes = iter(batches), 0, [], []
    warmup, t_start = max(workers, 3), time.perf_counter()
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        try: b = next(it)
        except StopIteration:
            epoch += 1; batches.sampler.set_epoch(epoch); it = iter(batches); b = next(it)
        b = to_device(b, device); sync(device)
        t1 = time.perf_counter()
        loss = step(model, optimizer, b, amp, dtype, scaler, cfg.clip_grad); sync(device)
        if i >= warmup: waits.append(t1 - t0); computes.append(time.perf_counter() - t1)
    wall = time.perf_counter() - t_start
    del it, batches  # the workers stop
    alone = []
    for _ in range(5):
        t0 = time.perf_counter(); step(model, optimizer, b, amp, dtype, scaler, cfg.clip_grad); sync(device)
        alone.append(time.perf_counter() - t0)
    return dict(workers=workers, worker_threads=threads or "default", batch=batch, steps=steps,
                wait_s=statistics.median(waits), compute_s=statistics.median(computes),
                wait_share=sum(waits) / (sum(waits) + sum(computes)), max_wait_s=max(waits),
                compute_alone_s=statistics.median(alone[1:]), points_per_batch=int(b["coord"].shape[0]), wall_s=wall,
                loss=loss.item(), waits_ms=[round(w * 1e3, 1) for w in waits],
                computes_ms=[round(c * 1e3, 1) for c in computes],
                peak_mem_gib=torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["16:default", "48:default", f"16:{os.cpu_count()}"],
                   help="WORKERS:THREADS pairs: loader workers, native threads per worker ('default': the trainer's, 1)")
    p.add_argument("--batch", type=int, default=None, help="scenes per step (default: the recipe's batch_size)")
    p.add_argument("--rooms", type=int, default=24, help="generated training rooms")
    p.add_argument("--spacing", type=float, default=0.02, help="surface sampling step of the rooms (m)")
    p.add_argument("--steps", type=int, default=30, help="timed steps (after one untimed step per worker)")
    p.add_argument("--data", default="/tmp/sonata_nb_datawait", help="where the rooms are generated (once)")
    p.add_argument("--tiny", action="store_true", help="CPU check: narrow model, 4 rooms at 15 cm, 2 workers, 3 steps")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    if args.tiny: args.rooms, args.spacing, args.steps, args.variants = 4, 0.15, 3, ["2:default", "2:2"]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    t0 = time.perf_counter()
    root = make_demo_data(Path(args.data) / f"rooms{args.rooms}_{args.spacing}", args.rooms, 1, spacing=args.spacing)
    gen_s = time.perf_counter() - t0
    cfg = recipe(root, args.spacing, args.rooms, args.tiny)
    batch = args.batch or (2 if args.tiny else cfg.batch_size)
    rows = []
    for v in args.variants:
        w, threads = v.split(":")
        w, threads = int(w), None if threads == "default" else int(threads)
        while True:
            try: rows.append(measure(cfg, w, threads, batch, args.steps, device)); break
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache(); batch //= 2
                print(f"batch does not fit, halving to {batch}", file=sys.stderr)
                if batch < 1: raise
        r = rows[-1]
        print(f"workers {w:3d} threads {r['worker_threads']}, batch {r['batch']}: wait {r['wait_s'] * 1e3:7.1f} ms, "
              f"compute {r['compute_s'] * 1e3:7.1f} ms (alone {r['compute_alone_s'] * 1e3:7.1f} ms), "
              f"wait share {100 * r['wait_share']:5.1f} %, max wait {r['max_wait_s']:.2f} s", flush=True)
        out = dict(config=CONFIG.name, device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   cpu_cores=os.cpu_count(), rooms=args.rooms, spacing=args.spacing, generate_s=gen_s, results=rows,
                   torch=torch.__version__, date=time.strftime("%Y-%m-%d"))
        if args.json: Path(args.json).write_text(json.dumps(out, indent=1))  # after each variant: a cut run keeps its rows
    return out


if __name__ == "__main__":
    main()
