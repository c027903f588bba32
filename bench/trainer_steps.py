"""The trainer's own `ft` steps: `foreach` AdamW (the reference's optimizer, a synchronous step) against fused AdamW (steps
decided on the device, `Trainer.optimizer_step_on_device`), in the ft recipe on generated rooms at ScanNet density.

    python bench/trainer_steps.py --batch 12 --json $OUT/trainer_steps.json   # GPU (H100: the recipe's 24 does not fit)
    python bench/trainer_steps.py --tiny                              # CPU check: narrow model, 2 small rooms

Per variant a `Trainer` is built from configs/sonata/semseg-sonata-v1m1-0c-scannet-ft.py (the rooms of
`sonata_nb.demo.make_demo_data` through `DemoDataset`, random weights, the recipe's AMP, loader workers and hooks), then
`train_epoch` runs twice: the first cycle warms up (workers, kernels), the second is timed to its last GPU op
(seconds per step). The variants run in turn in one process, `--rounds` times, alternating; medians per variant. What
the step includes: the loader's wait, forward, loss, backward, clipping, the optimizer and the hooks' per-step work.
"""
import argparse, json, statistics, sys, tempfile, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from datawait import TINY_BACKBONE
from steps import portable_command
from sonata_nb.config import default_config_parser
from sonata_nb.demo import make_demo_data
from sonata_nb.trainer import Trainer

CONFIG = ROOT/"configs"/"sonata"/"semseg-sonata-v1m1-0c-scannet-ft.py"


def recipe(data_root:Path, save_path:Path, spacing:float, rooms:int, steps:int, batch:int|None, workers:int|None,
           fused:bool, tiny:bool):
    "The ft recipe on the generated rooms: one cycle of about `steps` steps, the optimizer fused or not"
    opts = ["enable_wandb=False", "weight=None", f"save_path={save_path}", "data.train.type=DemoDataset",
            f"data.train.data_root={data_root}", f"data.train.spacing={spacing}", f"data.train.n_train={rooms}",
            "data.train.n_val=1", "data.val.type=DemoDataset", f"data.val.data_root={data_root}",
            f"data.val.spacing={spacing}", f"data.val.n_train={rooms}", "data.val.n_val=1", f"optimizer.fused={fused}"]
    if batch: opts.append(f"batch_size={batch}")
    if workers is not None: opts.append(f"num_worker={workers}")
    if tiny:
        opts += [f"model.backbone.{k}={v}".replace(" ", "") for k, v in TINY_BACKBONE.items()]
        opts += ["model.backbone_out_channels=8", "enable_amp=False"]
    cfg = default_config_parser(CONFIG, opts)
    per_pass = max(1, rooms // cfg.batch_size)  # steps per pass over the rooms
    loop = max(1, -(-steps // per_pass))
    return default_config_parser(CONFIG, opts + [f"epoch={2 * loop}", "eval_epoch=2"])


def timed_cycle(trainer:Trainer) -> dict:
    "Seconds per step of one train cycle, to its last GPU op"
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sync(); t = time.perf_counter()
    trainer.train_epoch(1)
    sync()
    steps = len(trainer.train_loader)
    return dict(steps=steps, s_per_step=(time.perf_counter() - t) / steps, skipped=trainer.skipped_steps)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rooms", type=int, default=24)
    p.add_argument("--spacing", type=float, default=0.02)
    p.add_argument("--steps", type=int, default=24, help="steps per cycle (about)")
    p.add_argument("--batch", type=int, default=None, help="scenes per step (default: the recipe's)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: the recipe's)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--data", default="/tmp/sonata_nb_trainer_steps")
    p.add_argument("--tiny", action="store_true", help="CPU check: narrow model, 2 rooms at 15 cm, 4 steps, 1 round")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.tiny: args.rooms, args.spacing, args.steps, args.batch, args.workers, args.rounds = 2, 0.15, 4, 2, 0, 1
    root = make_demo_data(Path(args.data) / f"rooms{args.rooms}_{args.spacing}", args.rooms, 1, spacing=args.spacing)
    rows = {False: [], True: []}
    for r in range(args.rounds):
        for fused in ((False, True) if r % 2 == 0 else (True, False)):
            with tempfile.TemporaryDirectory() as save:
                cfg = recipe(root, Path(save) / "exp", args.spacing, args.rooms, args.steps, args.batch, args.workers, fused, args.tiny)
                torch.manual_seed(0)
                trainer = Trainer(cfg)
                try:
                    assert trainer.on_device_steps == fused
                    trainer.train_epoch(0)  # warm-up cycle
                    rows[fused].append(timed_cycle(trainer))
                finally: trainer.lock.release()
            print(("fused (on device)" if fused else "foreach (synchronous)"), json.dumps(rows[fused][-1]), flush=True)
    res = dict(card=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               command=portable_command(["python3", "bench/trainer_steps.py", *(argv if argv is not None else sys.argv[1:])]),
               foreach=rows[False], fused=rows[True],
               foreach_median_s=statistics.median(r["s_per_step"] for r in rows[False]),
               fused_median_s=statistics.median(r["s_per_step"] for r in rows[True]))
    print(f"s per step: foreach {res['foreach_median_s']:.4f}, fused on device {res['fused_median_s']:.4f}")
    if args.json: Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
