"""The MLP backward's GELU work on the issue's hidden widths: torch (gelu recompute + gelu_backward + half sum) against
kernels.gelu_recompute_backward at several grids (programs per SM, warps), CUDA events, median of 20.
Usage: python bench/probes/gelu_grid.py   (writes $OUT/gelu_grid.json)"""
import json, os, statistics, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch, torch.nn.functional as F
from steps import portable_command
import sonata_nb.kernels as K
SHAPES = [(239901, 192, 3), (194994, 384, 3), (81990, 768, 3), (21582, 1536, 12), (5130, 2048, 3)]  # rows, 4C, blocks: ft step
def timed(fn, reps=20):
    for _ in range(3): fn()
    ms = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize(); ms.append(a.elapsed_time(b))
    return statistics.median(ms)
out = dict(card=torch.cuda.get_device_name(), command=portable_command(["python3", "bench/probes/gelu_grid.py"]), rows={})
data = [(torch.randn(n, c, device="cuda").half() * 3, torch.randn(n, c, device="cuda").half(), b) for n, c, b in SHAPES]
def per_step(fn): return sum(timed(lambda: fn(da, h)) * b for h, da, b in data)
out["rows"]["torch"] = per_step(lambda da, h: (F.gelu(h), torch.ops.aten.gelu_backward(da, h).sum(0)))
for per_sm in (4, 8, 16):
    for warps in (4, 8):
        K.GELU_CONFIG.update(per_sm=per_sm, warps=warps)
        out["rows"][f"kernel {per_sm}/SM {warps} warps"] = per_step(lambda da, h: K.gelu_recompute_backward(da, h))
for k, v in out["rows"].items(): print(f"{k}: {v:.2f} ms per ft step")
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "gelu_grid.json"), "w"), indent=1)
