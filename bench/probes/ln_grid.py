"""The LayerNorm backward (`kernels._ln_bwd`) of a real `ft` step at other tiles, programs per SM and warps.

One `ft` step records every `_ln_bwd` launch (its tensors and flags, as the model makes them); each is then replayed
with each variant's blocks (CUDA events around 10 back-to-back launches queued behind a sleep, so host time does not
count; median of 5), summed per step and by width, with the bandwidth its bytes (x, dy, the stream's gradient, dx) give.
Usage: python bench/probes/ln_grid.py SCAN_DIR   (writes $OUT/ln_grid.json)"""
import json, os, statistics, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch
from steps import build, portable_command, step_fn
import sonata_nb.kernels as K

model, head, data, labels = build("cuda", scan=sys.argv[1])
fn = step_fn("ft", model, head, data, labels)
for _ in range(2): fn()
torch.cuda.synchronize()

records, launcher = [], K.launcher
class Spy:
    "`launcher(_ln_bwd)` that also keeps each launch's arguments"
    def __init__(self, inner): self.inner = inner
    def __getitem__(self, grid):
        def go(*args, **kwargs):
            records.append((args, dict(kwargs)))
            return self.inner[grid](*args, **kwargs)
        return go
K.launcher = lambda f: Spy(launcher(f)) if f is K._ln_bwd else launcher(f)
fn()
torch.cuda.synchronize()
K.launcher = launcher
sms = torch.cuda.get_device_properties(0).multi_processor_count

def nbytes(t): return 0 if t is None else t.numel() * t.element_size()

def launch(args, kwargs, tile, per_sm, warps):
    "One `_ln_bwd` launch of a recorded call with a variant's blocks; the partial sums in buffers of its grid"
    x2, w, dy, ds, dx, mean, rstd, dwp, dbp, dxp, N, C, _ = args
    bc = kwargs["BLOCK_C"]
    br = max(1, tile // bc)
    G = max(1, min(K._cdiv(N, br), per_sm * sms))
    part = lambda t: None if t is None else torch.empty((C, G), dtype=torch.float32, device=x2.device)
    kw = dict(kwargs, BLOCK_R=br, num_warps=warps or min(16, max(4, br * bc // 512)))
    return lambda: launcher(K._ln_bwd)[(G,)](x2, w, dy, ds, dx, mean, rstd, part(dwp), part(dbp), part(dxp), N, C,
                                             K._cdiv(K._cdiv(N, br), G), **kw)

def timed(go, reps=10, rounds=5):
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

wide = [(t, s, w) for t in (1024, 2048, 4096, 8192) for s in (2, 4, 8) for w in (None, 4, 8)]
narrow = [(t, s, w) for t in (512, 1024, 2048) for s in (16, 32) for w in (1, 2)]  # one- and two-warp programs: a row's sums inside a warp
variants = [(4096, 4, None)] + [v for v in narrow + wide if v != (4096, 4, None)]  # the default first
out = dict(card=torch.cuda.get_device_name(), command=portable_command(["python3", "bench/probes/ln_grid.py", *sys.argv[1:]]),
           launches=[dict(N=a[10], C=a[11], x=str(a[0].dtype), dy=str(a[2].dtype), ds=None if a[3] is None else str(a[3].dtype),
                          dx=str(a[4].dtype), flags={k: v for k, v in kw.items() if k.startswith("HAS")}) for a, kw in records],
           variants={})
total_bytes = sum(nbytes(a[0]) + nbytes(a[2]) + nbytes(a[3]) + nbytes(a[4]) for a, _ in records)
print(f"{len(records)} launches, {total_bytes / 1e9:.2f} GB per step")
for t, s, w in variants:
    by_c = {}
    for args, kwargs in records:
        by_c[args[11]] = by_c.get(args[11], 0.0) + timed(launch(args, kwargs, t, s, w))
    step = sum(by_c.values())
    out["variants"][f"tile {t} {s}/SM warps {w or 'auto'}"] = dict(ms=step, by_width=by_c, tb_s=total_bytes / step / 1e9)
    print(f"tile {t:5d} {s}/SM warps {w or 'auto':>4}: {step:.3f} ms per step ({total_bytes / step / 1e9:.2f} TB/s); by width "
          + " ".join(f"{c}:{v:.3f}" for c, v in sorted(by_c.items())))
default = out["variants"][f"tile 4096 4/SM warps auto"]["by_width"]
out["best_by_width"] = {}
for c in sorted(default):
    name, v = min(((k, v["by_width"][c]) for k, v in out["variants"].items()), key=lambda kv: kv[1])
    out["best_by_width"][c] = dict(variant=name, ms=v, default_ms=default[c])
    print(f"width {c}: best {name} {v:.3f} ms against {default[c]:.3f} ms")
print(f"per-width best: {sum(b['ms'] for b in out['best_by_width'].values()):.3f} ms against {sum(default.values()):.3f} ms per step")
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "ln_grid.json"), "w"), indent=1)
