"""Training-step throughput of the Sonata recipes (lin / dec / ft) with their full configs on synthetic scenes.

One step = forward + backward + gradient clipping + AdamW step (keyword lr groups), under the config's AMP setting,
on a batch of synthetic rooms with up to `--points` grid-sampled points each (the recipe's SphereCrop limit).
The batch starts at the recipe's 24 scenes and is halved until it fits the GPU. Reports scenes/s and peak memory.

    python bench/train.py                         # H100: lin, dec, ft at batch 24 (or the largest that fits)
    python bench/train.py --json bench_train.json
    python bench/train.py --device cpu --tiny     # a few small scenes and a narrow model: checks the script on a CPU
"""
import argparse, json, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`
from sonata_nb.config import default_config_parser
from sonata_nb.datasets import collate_fn
from sonata_nb.segmentor import build_model
from sonata_nb.trainer import amp_setup, build_optimizer

RECIPES = dict(lin="semseg-sonata-v1m1-0a-scannet-lin", dec="semseg-sonata-v1m1-0b-scannet-dec",
               ft="semseg-sonata-v1m1-0c-scannet-ft")
TINY_BACKBONE = dict(enc_depths=(1, 1, 1, 1, 1), enc_channels=(8, 8, 16, 16, 32), enc_num_head=(1, 1, 2, 2, 4),
                     enc_patch_size=(64,) * 5, dec_depths=(1, 1, 1, 1), dec_channels=(8, 8, 16, 16),
                     dec_num_head=(1, 1, 2, 2), dec_patch_size=(64,) * 4)


def synthetic_scene(n_points:int, num_classes:int, seed:int, grid_size:float=0.02) -> dict:
    "A room-like cloud after GridSample: points on the floor, walls and boxes of a 8 x 6 x 3 m room, one per 2 cm voxel"
    g = torch.Generator().manual_seed(seed)
    m = 3 * n_points  # oversample, then keep one point per voxel
    u = torch.rand(m, 3, generator=g) * torch.tensor([8.0, 6.0, 3.0])
    face = torch.randint(0, 6, (m,), generator=g)
    u[face == 0, 2] = 0.0; u[face == 1, 0] = 0.0; u[face == 2, 0] = 8.0; u[face == 3, 1] = 0.0; u[face == 4, 1] = 6.0
    box = face == 5  # furniture: points on the top faces of boxes at random heights
    u[box, 2] = (u[box, 0] * 3.7 + u[box, 1] * 2.3).floor().remainder(4) * 0.25 + 0.4
    grid = torch.floor(u / grid_size).long()
    _, first = torch.unique(grid, dim=0, return_inverse=True)
    keep = torch.zeros(int(first.max()) + 1, dtype=torch.long).scatter_(0, first, torch.arange(m))[:n_points]
    coord, grid = u[keep], grid[keep] - grid[keep].min(0).values
    coord = coord - coord.mean(0)
    normal = torch.nn.functional.normalize(torch.randn(len(keep), 3, generator=g), dim=1)
    color = torch.rand(len(keep), 3, generator=g)
    segment = torch.randint(0, num_classes, (len(keep),), generator=g)
    return dict(coord=coord, grid_coord=grid, segment=segment, feat=torch.cat([coord, color, normal], 1),
                offset=torch.tensor([len(keep)]))


def train_step(model, optimizer, batch, amp, dtype, scaler, clip_grad, device):
    "One optimizer step: forward under autocast, backward, unscale, clip, step"
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=dtype, enabled=amp):
        loss = model(batch)["loss"]
    (scaler.scale(loss) if scaler else loss).backward()
    if scaler: scaler.unscale_(optimizer)
    if clip_grad: torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if scaler: scaler.step(optimizer); scaler.update()
    else: optimizer.step()
    return loss.detach()


def bench_recipe(name:str, args, device) -> dict:
    "Time `args.steps` training steps of recipe `name` at the largest batch (24, 12, ...) that fits"
    options = ["enable_wandb=False"]
    if args.tiny:
        options += [f"model.backbone.{k}={v}".replace(" ", "") for k, v in TINY_BACKBONE.items()]
        options.append(f"model.backbone_out_channels={sum(TINY_BACKBONE['enc_channels']) if name == 'lin' else 8}")
    cfg = default_config_parser(ROOT/"configs"/"sonata"/f"{RECIPES[name]}.py", options)
    amp, dtype, scaler = amp_setup(cfg.get("enable_amp", False), cfg.get("amp_dtype", "float16"), device)
    batch_size = args.batch
    while batch_size >= 1:
        model = optimizer = batch = None
        if device.type == "cuda": torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(device)
        try:
            model = build_model(cfg.model).to(device).train()
            optimizer = build_optimizer(cfg.optimizer, model, cfg.get("param_dicts"))
            scenes = [synthetic_scene(args.points, cfg.data.num_classes, seed=i) for i in range(batch_size)]
            batch = {k: v.to(device) for k, v in collate_fn(scenes).items()}
            for _ in range(args.warmup): train_step(model, optimizer, batch, amp, dtype, scaler, cfg.clip_grad, device)
            if device.type == "cuda": torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(args.steps): loss = train_step(model, optimizer, batch, amp, dtype, scaler, cfg.clip_grad, device)
            if device.type == "cuda": torch.cuda.synchronize(device)
            dt = (time.perf_counter() - t0) / args.steps
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            return dict(recipe=name, config=RECIPES[name], batch=batch_size, points=int(batch["coord"].shape[0]),
                        amp=str(dtype).replace("torch.", "") if amp else "off", step_s=dt, scenes_per_s=batch_size / dt,
                        peak_mem_gib=peak, loss=float(loss), device=torch.cuda.get_device_name(device)
                        if device.type == "cuda" else "cpu", tiny=args.tiny,
                        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad))
        except torch.OutOfMemoryError:
            print(f"{name}: batch {batch_size} does not fit, halving", file=sys.stderr)
            batch_size //= 2
    raise RuntimeError(f"{name}: not even one scene of {args.points} points fits on {device}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--batch", type=int, default=24, help="scenes per step to try first (the recipe's 24)")
    p.add_argument("--points", type=int, default=102400, help="points per scene (the recipe's SphereCrop point_max)")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="narrow model, 4 scenes of 4096 points, 1+1 steps (CPU check)")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)
    if args.tiny: args.batch, args.points, args.steps, args.warmup = min(args.batch, 4), min(args.points, 4096), 1, 1
    device = torch.device(args.device)
    rows = [bench_recipe(name, args, device) for name in args.recipes]
    print("| recipe | batch | points | AMP | step (s) | scenes/s | peak GPU mem (GiB) | trainable params | device |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['batch']} | {r['points']:,} | {r['amp']} | {r['step_s']:.3f} | {r['scenes_per_s']:.2f} "
              f"| {r['peak_mem_gib']:.1f} | {r['trainable_params']:,} | {r['device']} |")
    if args.json: Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
