"""Multi-GPU scaling of the full fine-tuning (`ft`) step, and its equivalence with one GPU at the same global batch.

Run under torchrun, once per GPU count, with the same `--global-batch`:

    torchrun --standalone --nproc_per_node 1 bench/ddp.py --global-batch 8 --json ddp1.json
    torchrun --standalone --nproc_per_node 2 bench/ddp.py --global-batch 8 --json ddp2.json

Every run sees the same synthetic scenes (seeds 0..global_batch-1, rank r takes its contiguous share) and starts from
the same weights (seed 0), so the rank-averaged losses of the first steps must agree across GPU counts up to the
difference between one loss over the whole batch and the mean of per-rank losses (the DDP convention of the reference).
"""
import argparse, json, os, sys, time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT/"bench"))
from train import RECIPES, TINY_BACKBONE, synthetic_scene, train_step  # bench/train.py
from sonata_nb.config import default_config_parser
from sonata_nb.datasets import collate_fn
from sonata_nb.segmentor import build_model
from sonata_nb.trainer import amp_setup, build_optimizer


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="ft", choices=list(RECIPES))
    p.add_argument("--global-batch", type=int, default=8, help="scenes per step over all GPUs")
    p.add_argument("--points", type=int, default=102400)
    p.add_argument("--steps", type=int, default=10, help="timed steps after the warm-up")
    p.add_argument("--warmup", type=int, default=3, help="steps whose losses are compared across GPU counts")
    p.add_argument("--tiny", action="store_true", help="narrow model and small scenes (CPU/gloo check)")
    p.add_argument("--json")
    args = p.parse_args()
    cuda = torch.cuda.is_available() and not args.tiny
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda: torch.cuda.set_device(device)
    if args.global_batch % world: raise SystemExit(f"--global-batch {args.global_batch} is not divisible by {world} GPUs")
    per_rank = args.global_batch // world
    options = ["enable_wandb=False", "model.backbone.drop_path=0.0"]  # no DropPath: identical functions on every rank
    if args.tiny:
        options += [f"model.backbone.{k}={v}".replace(" ", "") for k, v in TINY_BACKBONE.items()]
        options.append(f"model.backbone_out_channels={sum(TINY_BACKBONE['enc_channels']) if args.recipe == 'lin' else 8}")
    cfg = default_config_parser(ROOT/"configs"/"sonata"/f"{RECIPES[args.recipe]}.py", options)
    cfg.model.backbone.shuffle_orders = False  # the same serialization orders on every rank and GPU count
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device).train()
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None,
                                                    broadcast_buffers=False)
    optimizer = build_optimizer(cfg.optimizer, ddp, cfg.get("param_dicts"))
    amp, dtype, scaler = amp_setup(cfg.get("enable_amp", False), cfg.get("amp_dtype", "float16"), device)
    scenes = [synthetic_scene(args.points, cfg.data.num_classes, seed=i)
              for i in range(rank * per_rank, (rank + 1) * per_rank)]
    batch = {k: v.to(device) for k, v in collate_fn(scenes).items()}
    losses = []
    for _ in range(args.warmup):
        loss = train_step(ddp, optimizer, batch, amp, dtype, scaler, cfg.clip_grad, device)
        dist.all_reduce(loss); losses.append(float(loss) / world)
    if cuda: torch.cuda.synchronize(device); torch.cuda.reset_peak_memory_stats(device)
    dist.barrier(); t0 = time.perf_counter()
    for _ in range(args.steps): train_step(ddp, optimizer, batch, amp, dtype, scaler, cfg.clip_grad, device)
    if cuda: torch.cuda.synchronize(device)
    dist.barrier(); dt = (time.perf_counter() - t0) / args.steps
    peak = torch.tensor(torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0, device=device)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if rank == 0:
        res = dict(recipe=args.recipe, gpus=world, global_batch=args.global_batch, per_gpu_batch=per_rank,
                   points_per_scene=args.points, step_s=dt, scenes_per_s=args.global_batch / dt,
                   peak_mem_gib_per_gpu=float(peak), first_losses=losses,
                   device=torch.cuda.get_device_name(device) if cuda else "cpu", amp=str(dtype) if amp else "off")
        print(json.dumps(res))
        if args.json: Path(args.json).write_text(json.dumps(res, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
