"""Cached against on-the-fly linear probing of the demo encoder on the demo rooms (CPU), end to end.

    python bench/lincache.py --json [bench/results/lincache_cpu2core.json] [--views 8] [--weight ENCODER.pth] [--schedule sonata]

6 train and 2 validation demo rooms by default, so that both runs fit in 20 minutes on 2 busy cores
(--rooms 24 --val-rooms 6: the full demo set, about 4x longer). Both runs use configs/demo/semseg-demo-lin.py
unchanged except for the folders, rooms and (--schedule) passes: same seed, optimizer, OneCycle schedule, loss and
validation. --schedule demo (default): the demo recipe's 48 passes validated every 6 (8 cycles); --schedule sonata:
the Sonata ScanNet `lin` recipe's 800 passes validated every 8 (epoch=800, eval_epoch=100: 100 cycles), 6-9 minutes
on 2 quiet cores. --epoch / --eval-epoch override either. The PreciseEvaluator hook is left out of both (the final
test is the same work in both modes): the mIoU compared is the Trainer's validation mIoU on the validation rooms
(best and last cycle). `cached_s` includes building the cache.
Without --weight, a demo `ft` run (--ft-epoch passes, not timed) trains the encoder that both probe.
The machine is shared: the 1-minute load average is recorded before and after each run, with the process CPU time,
its system part and page faults, and the wall and CPU time of each phase (`phases`: cache building, train cycles,
steps, cached batch reads, Lovász loss, backward, encoder calls, validations, checkpoints; nested phases overlap).
One-time costs of the process (torch's lazy imports on the first optimizer) are paid before either run is timed.
"""
import argparse, collections, datetime, functools, gc, json, math, os, platform, resource, shutil, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [q for q in sys.path if Path(q or ".").resolve() != ROOT/"bench"]  # bench/profile.py is not stdlib's
import numpy as np
import torch

from sonata_nb.config import default_config_parser
from sonata_nb.demo import make_demo_data
from sonata_nb.trainer import Trainer

HOOKS = [dict(type="CheckpointLoader"), dict(type="ModelHook"), dict(type="IterationTimer", warmup_iter=2),
         dict(type="InformationWriter"), dict(type="SemSegEvaluator"), dict(type="CheckpointSaver", save_freq=None)]


ROOMS = dict(n_train=6, n_val=2)  # of the demo generator (24 / 6 is the full demo set: --rooms 24 --val-rooms 6)


def config(mode, data_root, save_path, **opts):
    "The demo `mode` config on `data_root` without the precise evaluation"
    o = {f"data.{s}.{k}": v for s in ("train", "val", "test") for k, v in dict(ROOMS, data_root=str(data_root)).items()}
    o |= dict(save_path=str(save_path), seed=0, hooks=HOOKS, report=False) | opts
    return default_config_parser(ROOT/"configs"/"demo"/f"semseg-demo-{mode}.py", o)


def records(save_path):
    return [json.loads(l) for l in (Path(save_path)/"log"/"metrics.jsonl").read_text().splitlines()]


PHASES = collections.defaultdict(lambda: [0.0, 0.0, 0])  # name -> [wall s, CPU s, calls] of the run being timed


def time_phases():
    "Wrap the phases of both modes with wall and CPU timers adding to PHASES"
    import sonata_nb.lincache as L, sonata_nb.losses as Lo, sonata_nb.segmentor as S, sonata_nb.trainer as T
    def timed(owner, name, label):
        f = getattr(owner, name)
        @functools.wraps(f)
        def g(*a, **k):
            t, c = time.perf_counter(), time.process_time()
            try: return f(*a, **k)
            finally: r = PHASES[label]; r[0] += time.perf_counter() - t; r[1] += time.process_time() - c; r[2] += 1
        setattr(owner, name, g)
    for owner, name, label in [(L, "build_cache", "build_cache"), (T.Trainer, "train_epoch", "train_cycles"),
                               (T.Trainer, "run_step", "steps"), (Lo.LovaszLoss, "forward", "lovasz"),
                               (torch.Tensor, "backward", "backward"), (S.DefaultSegmentorV2, "features", "encoder"),
                               (T.Trainer, "validate", "validation"), (T.Trainer, "save", "checkpoints"),
                               (L.CachedViews, "collated", "batch_reads")]:
        timed(owner, name, label)


def warm_up():
    "Pay the process's one-time costs (torch imports its compiler stack on the first optimizer) before timing"
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def run(make, label):
    "Build and train; wall time from construction (cache building included) to the end"
    PHASES.clear()
    load0, t, cpu, r0 = os.getloadavg()[0], time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
    trainer = make(); trainer.train()
    seconds, cpu, r1 = time.perf_counter() - t, time.process_time() - cpu, resource.getrusage(resource.RUSAGE_SELF)
    recs = records(trainer.save_path)
    val, train = [r for r in recs if r["type"] == "val"], [r for r in recs if r["type"] == "train"]
    out = dict(s=round(seconds, 1), cpu_s=round(cpu, 1), miou=max(r["mIoU"] for r in val), last_miou=val[-1]["mIoU"],
               first_loss=train[0]["loss"], last_loss=train[-1]["loss"], load_1min=[load0, os.getloadavg()[0]],
               steps=trainer.step, page_faults=r1.ru_minflt - r0.ru_minflt, sys_s=round(r1.ru_stime - r0.ru_stime, 2), phases={k: dict(wall_s=round(w, 2), cpu_s=round(c, 2), calls=n) for k, (w, c, n) in PHASES.items()})
    print(f"{label}: {json.dumps(out)}", file=sys.stderr)
    return trainer, out


@torch.no_grad()
def loss_scale(weight, data_root, out):
    "Feature scale of the probed encoder on one train view and the loss of the fresh (PyTorch-initialised) head"
    from sonata_nb.datasets import build_dataset, collate_fn
    from sonata_nb.model import load_weights
    from sonata_nb.runtime import to_plain
    from sonata_nb.segmentor import build_model
    cfg = config("lin", data_root, out/"scale")
    torch.manual_seed(0)
    model = build_model(cfg.model); load_weights(model.backbone, weight, strict=True)
    batch = collate_fn([build_dataset(dict(to_plain(cfg.data.train), loop=1))[i] for i in range(4)])
    res = {}
    for mode in ("train", "eval"):
        model.train(mode == "train"); torch.manual_seed(0)
        feat = model.features(batch)
        logits, ce = model.seg_head(feat), torch.nn.functional.cross_entropy
        widths, start, rms = model.backbone.config["enc_channels"], 0, []
        for w in widths: rms.append(round(feat[:, start:start + w].pow(2).mean().sqrt().item(), 3)); start += w
        res[mode] = dict(feature_rms_per_stage=rms, logit_std=round(logits.std().item(), 3),
                         initial_ce=round(ce(logits, batch["segment"], ignore_index=-1).item(), 3),
                         initial_loss=round(model.criteria(logits, batch["segment"]).item(), 3))
    res["uniform_ce"] = round(math.log(cfg.data.num_classes), 3)
    return res


SCHEDULES = dict(demo=(48, 8), sonata=(800, 100))  # (epoch, eval_epoch): the demo lin recipe's, Sonata's ScanNet lin recipe's


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", nargs="?", const="", default=None, help="print one JSON object (and write it to this file)")
    p.add_argument("--views", type=int, default=8, help="K, views cached per train room")
    p.add_argument("--weight", help="encoder to probe (default: train a demo ft for --ft-epoch passes first)")
    p.add_argument("--ft-epoch", type=int, default=8, help="passes of the untimed demo ft run that makes the encoder")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default="demo",
                   help="probe passes and cycles: demo = 48 passes, 8 cycles (the demo lin recipe); sonata = 800 passes, "
                        "100 cycles (configs/sonata/semseg-sonata-v1m1-0a-scannet-lin.py)")
    p.add_argument("--epoch", type=int, help="probe passes over the train rooms (default: the schedule's)")
    p.add_argument("--eval-epoch", type=int, help="probe train/validation cycles (default: the schedule's)")
    p.add_argument("--encoder-mode", choices=("train", "eval"), default="train", help="encoder mode while caching")
    p.add_argument("--rooms", type=int, default=6, help="train rooms (the full demo set: 24; ~4x longer)")
    p.add_argument("--val-rooms", type=int, default=2, help="validation rooms (the full demo set: 6)")
    p.add_argument("--work", help="folder for the data and runs (default: a temporary one, removed)")
    args = p.parse_args(argv)
    args.epoch, args.eval_epoch = args.epoch or SCHEDULES[args.schedule][0], args.eval_epoch or SCHEDULES[args.schedule][1]
    work = Path(args.work or tempfile.mkdtemp(prefix="lincache_bench_"))
    ROOMS.update(n_train=args.rooms, n_val=args.val_rooms)
    data_root = make_demo_data(work/"demo", **ROOMS)
    res = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
               machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
               torch=torch.__version__, threads=torch.get_num_threads(), views=args.views, epoch=args.epoch,
               eval_epoch=args.eval_epoch, schedule=args.schedule, rooms=[args.rooms, args.val_rooms], encoder_mode=args.encoder_mode,
               command="python bench/lincache.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    weight = args.weight
    if weight is None:
        t = time.perf_counter()
        ft = Trainer(config("ft", data_root, work/"ft", epoch=args.ft_epoch, eval_epoch=2)); ft.train()
        weight, res["ft_s"], res["ft_miou"] = str(work/"ft"/"model"/"model_best.pth"), round(time.perf_counter() - t, 1), ft.best_metric
        del ft; gc.collect()  # its persistent loader workers end before anything is timed
    res["weight"] = "demo ft run" if args.weight is None else args.weight
    res["loss_scale"] = loss_scale(weight, data_root, work)
    probe = dict(weight=weight, epoch=args.epoch, eval_epoch=args.eval_epoch)
    from sonata_nb.lincache import LinCacheTrainer
    warm_up(); time_phases()
    cached, c = run(lambda: LinCacheTrainer(config("lin", data_root, work/"lin_cached", **probe), views=args.views,
                                            encoder_mode=args.encoder_mode), "cached")
    _, u = run(lambda: Trainer(config("lin", data_root, work/"lin", **probe)), "on-the-fly")
    res |= dict(cached_s=c["s"], uncached_s=u["s"], speedup=round(u["s"] / c["s"], 2),
                cached_miou=c["miou"], uncached_miou=u["miou"], miou_points_lost=round(100 * (u["miou"] - c["miou"]), 2),
                cached_last_miou=c["last_miou"], uncached_last_miou=u["last_miou"],
                cache_bytes=cached.cache_bytes, cache_mib=round(cached.cache_bytes / 2**20, 1),
                cache_points=cached.cache.meta["points"], cache_channels=cached.cache.meta["channels"],
                cache_build_s=cached.cache.meta["build_seconds"], steps=[c["steps"], u["steps"]],
                first_loss=dict(cached=c["first_loss"], uncached=u["first_loss"]),
                last_loss=dict(cached=c["last_loss"], uncached=u["last_loss"]),
                load_1min=dict(cached=c["load_1min"], uncached=u["load_1min"]),
                cpu_s=dict(cached=c["cpu_s"], uncached=u["cpu_s"]), sys_s=dict(cached=c["sys_s"], uncached=u["sys_s"]),
                page_faults=dict(cached=c["page_faults"], uncached=u["page_faults"]), phases=dict(cached=c["phases"], uncached=u["phases"]))
    text = json.dumps(res, indent=1)
    if args.json is not None:
        print(text)
        if args.json: Path(args.json).parent.mkdir(parents=True, exist_ok=True); Path(args.json).write_text(text + "\n")
    if args.work is None: shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
