"""The row kernels of a real `ft` step (LayerNorm and residual + DropPath, each way) at other tiles, programs per SM and warps.

One `ft` step records every launch of `_ln_fwd`, `_ln_bwd`, `_res_drop_fwd` and `_res_drop_bwd` (tensors and flags, as
the model makes them); each is then replayed as launched and with each variant's blocks (CUDA events around 10
back-to-back launches queued behind a sleep, so host time does not count; median of 3), summed per step and by width,
with the best per width among the variants whose outputs match the launch as made (`ROW_TUNE=row_grid.json` makes bench/probes/prof_ops.py take them). A variant is (elements of a row tile, programs per SM, warps): the forward kernels launch one
program per tile (no programs per SM); `_res_drop_bwd` loops over tiles only where it sums a bias.
Usage: python bench/probes/row_grid.py SCAN_DIR [KERNELS]   (comma-separated, default all; writes $OUT/row_grid.json)"""
import json, os, statistics, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch
from steps import build, portable_command, step_fn
import sonata_nb.kernels as K

KERNELS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["ln_bwd", "ln_fwd", "res_drop_bwd", "res_drop_fwd"]
model, head, data, labels = build("cuda", scan=sys.argv[1])
fn = step_fn("ft", model, head, data, labels)
for _ in range(2): fn()
torch.cuda.synchronize()

records, launcher = {k: [] for k in KERNELS}, K.launcher
class Spy:
    "`launcher(kernel)` that also keeps each launch's grid and arguments"
    def __init__(self, name, inner): self.name, self.inner = name, inner
    def __getitem__(self, grid):
        def go(*args, **kwargs):
            records[self.name].append((grid, args, dict(kwargs)))
            return self.inner[grid](*args, **kwargs)
        return go
names = {getattr(K, "_" + k): k for k in KERNELS}
K.launcher = lambda f: Spy(names[f], launcher(f)) if f in names else launcher(f)
fn()
torch.cuda.synchronize()
K.launcher = launcher
sms = torch.cuda.get_device_properties(0).multi_processor_count

# per kernel: the positions of N, C and (persistent kernels) iters, and the partial-sum buffers (C, G) to remake
# and the outputs a variant must reproduce
LAYOUT = dict(ln_fwd=dict(N=7, C=8, out=(4, 5, 6)), res_drop_fwd=dict(N=4, C=5, out=(3,)),
              ln_bwd=dict(N=10, C=11, iters=12, parts=(7, 8, 9), out=(4,)), res_drop_bwd=dict(N=4, C=5, iters=8, parts=(3,), out=(2,)))
TOLERANCE = 1e-4  # relative L2 error to the launch as made above which a variant is wrong, never best (float32 sums: ~1e-7)

def launch(kernel, grid, args, kwargs, variant):
    "A recorded launch as launched (variant None) or with a variant's blocks; partial sums in buffers of its grid"
    if variant is None: return lambda: (launcher(getattr(K, "_" + kernel))[grid](*args, **kwargs), args)[1]
    tile, per_sm, warps = variant
    lay, args = LAYOUT[kernel], list(args)
    N, C, bc = args[lay["N"]], args[lay["C"]], kwargs["BLOCK_C"]
    br = max(1, tile // bc)
    tiles = K._cdiv(N, br)
    loops = "iters" in lay and (kernel == "ln_bwd" or kwargs["HAS_SUM"])
    G = max(1, min(tiles, per_sm * sms)) if loops else tiles
    if "iters" in lay: args[lay["iters"]] = K._cdiv(tiles, G)
    if not warps: warps = min(16, max(4, br * bc // 512))  # auto: about 16 elements a thread
    elif br == 1: warps = max(warps, min(16, bc // 512))  # as kernels._row_blocks launches a wide row
    kw = dict(kwargs, BLOCK_R=br, num_warps=warps)
    parts = [i for i in lay.get("parts", ()) if args[i] is not None]
    def go():
        for i in parts: args[i] = torch.empty((C, G), dtype=torch.float32, device=args[0].device)
        launcher(getattr(K, "_" + kernel))[(G,)](*args, **kw)
        return args
    return go

def outputs(kernel, args) -> list:
    "What a launch made: its outputs and its partial sums added over the programs, in float32"
    lay = LAYOUT[kernel]
    return [args[i].float().clone() for i in lay["out"]] + [args[i].sum(1) for i in lay.get("parts", ()) if args[i] is not None]

def error(kernel, grid, args, kwargs, variant) -> float:
    "The largest relative error of a variant's outputs to the launch as made, on one recorded launch"
    ref = outputs(kernel, launch(kernel, grid, args, kwargs, None)())
    got = outputs(kernel, launch(kernel, grid, args, kwargs, variant)())
    return max(((g - r).norm() / r.norm().clamp_min(1e-30)).item() for g, r in zip(got, ref))

def timed(go, reps=10, rounds=3):
    go(); torch.cuda.synchronize()
    ms = []
    for _ in range(rounds):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(2_000_000)  # the queue fills while the GPU sleeps: launches back to back
        a.record()
        for _ in range(reps): go()
        b.record(); b.synchronize()
        ms.append(a.elapsed_time(b) / reps)
    return statistics.median(ms)

def variants(kernel):
    if kernel in ("ln_fwd", "res_drop_fwd"): return [(t, 0, w) for t in (1024, 2048, 4096, 8192) for w in (None, 2, 4, 8)]
    wide = [(t, s, w) for t in (1024, 2048, 4096, 8192) for s in (2, 4, 8) for w in (None, 4, 8)]
    return wide + [(t, s, w) for t in (512, 1024) for s in (16,) for w in (1, 2)]

def resolved(kernel, v, C):
    "A variant as a `kernels.ROW_BY_WIDTH` entry at width C (tile, programs per SM, warps): None as launched"
    if v is None: return None
    tile, per_sm, warps = v
    bc = K._pow2(C)
    br = max(1, tile // bc)
    return [tile, per_sm or K.ROW_CONFIG[kernel][1], warps or min(16, max(4, br * bc // 512))]

out = dict(card=torch.cuda.get_device_name(), command=portable_command(["python3", "bench/probes/row_grid.py", *sys.argv[1:]]), kernels={})
for kernel in KERNELS:
    recs, lay = records[kernel], LAYOUT[kernel]
    res = out["kernels"][kernel] = dict(launches=len(recs), variants={})
    print(f"{kernel}: {len(recs)} launches")
    for v in [None] + variants(kernel):
        by_c, err = {}, 0.0
        for grid, args, kwargs in recs:
            by_c[args[lay["C"]]] = by_c.get(args[lay["C"]], 0.0) + timed(launch(kernel, grid, args, kwargs, v))
            if v is not None: err = max(err, error(kernel, grid, args, kwargs, v))
        name = "as launched" if v is None else f"tile {v[0]} {v[1]}/SM warps {v[2] or 'auto'}"
        res["variants"][name] = dict(ms=sum(by_c.values()), by_width=by_c, config=v, max_rel_err=err)
        print(f"  {name}: {sum(by_c.values()):.3f} ms per step, error {err:.1e}{' WRONG' if err > TOLERANCE else ''}; by width "
              + " ".join(f"{c}:{t:.3f}" for c, t in sorted(by_c.items())))
    now = res["variants"]["as launched"]["by_width"]
    res["best_by_width"] = {}
    for c in sorted(now):
        name, t = min(((k, v["by_width"][c]) for k, v in res["variants"].items() if v["max_rel_err"] <= TOLERANCE), key=lambda kv: kv[1])
        res["best_by_width"][c] = dict(variant=name, ms=t, launched_ms=now[c], config=resolved(kernel, res["variants"][name]["config"], c))
        print(f"  width {c}: best {name} {t:.3f} ms against {now[c]:.3f} ms as launched")
    print(f"  per-width best {sum(b['ms'] for b in res['best_by_width'].values()):.3f} ms against {sum(now.values()):.3f} ms as launched")
    json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "row_grid.json"), "w"), indent=1)
