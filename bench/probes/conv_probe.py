"""Probe: each distinct SubMConv3d of the `ft` forward (the first convolution of every stage) through spconv against
`sparse_conv.subm_conv` on a `neighbour_table` (the gathers; and the Triton kernels where they run), forward + backward
under fp16 autocast; whether the table equals spconv's implicit-GEMM map (`pair_fwd`). Until 2026-12-06 21:45 the
gathers were a copy in this file on spconv's map (the 21:00 figures); the same function.
Usage: python bench/probes/conv_probe.py SCAN_DIR [REPEATS]   (PROBE_DEV=cpu: tiny model, CPU check)"""
import sys, json, os, statistics, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch
from steps import build
import sonata_nb.model as M
from sonata_nb.model import upcast
from sonata_nb.sparse_conv import kernel_usable, neighbour_table, subm_conv
M.set_conv_backend("spconv")  # the model's convolutions through spconv (its maps); ours below

def sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()

def timeit(fn, n):
    for _ in range(3): fn()
    sync(); ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); sync(); ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)

DEV = os.environ.get("PROBE_DEV", "cuda")
model, head, data, labels = build(DEV, scan=sys.argv[1], **(dict(tiny=True, crop=3000) if DEV == "cpu" else {}))
n = int(sys.argv[2]) if len(sys.argv) > 2 else 20
seen, caps = set(), []
def hook(mod, inp, out):
    key = (mod.indice_key, tuple(mod.kernel_size), mod.in_channels)
    if key not in seen: seen.add(key); caps.append((mod, inp[0]))
hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, M.SubMConv3d)]
model.train()
with torch.autocast(DEV, dtype=torch.float16): upcast(model(data))
for h in hs: h.remove()
rows = []
for mod, sp in caps:
    mp = sp.indice_dict.get(mod.indice_key) if mod.indice_key else None
    x0 = sp.features.detach().to(torch.float16 if DEV == "cuda" else torch.float32)
    N, K, ks = x0.shape[0], mod.weight[0, ..., 0].numel(), mod.kernel_size[0]
    row = dict(key=mod.indice_key, N=N, cin=mod.in_channels, cout=mod.out_channels, K=K)
    t = neighbour_table(sp.indices, sp.spatial_shape, sp.batch_size, ks)
    if hasattr(mp, "pair_fwd"): row["table_eq_pair"] = bool((torch.where(t == N, -1, t) == mp.pair_fwd.t().long()).all())
    row["table_ms"] = timeit(lambda: neighbour_table(sp.indices, sp.spatial_shape, sp.batch_size, ks), n)
    g = torch.randn(N, mod.out_channels, device=DEV, dtype=x0.dtype)
    x = x0.clone().requires_grad_(True)
    w = mod.weight.detach().to(x0.dtype).requires_grad_(True)
    bias = 0 if mod.bias is None else mod.bias.detach().to(x0.dtype)
    def sp_step():
        x.grad = None; mod.weight.grad = None
        with torch.autocast(DEV, dtype=torch.float16): out = mod(sp.replace_feature(x)).features
        out.backward(g)
        return out
    def own_step(kernel):
        def step():
            x.grad = None; w.grad = None
            out = subm_conv(x, t, w, kernel=kernel) + bias
            out.backward(g)
            return out
        return step
    o1 = sp_step(); dx1, dw1 = x.grad.float().clone(), mod.weight.grad.float().clone()
    o2 = own_step(False)(); dx2, dw2 = x.grad.float().clone(), w.grad.float().clone()
    rel = lambda a, b: ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()
    row.update(out_rel=rel(o2, o1), dx_rel=rel(dx2, dx1), dw_rel=rel(dw2, dw1))
    row["spconv_ms"], row["gather_ms"] = timeit(sp_step, n), timeit(own_step(False), n)
    if kernel_usable(x0): row["triton_ms"] = timeit(own_step(True), n)
    def sp_fwd():
        with torch.no_grad(), torch.autocast(DEV, dtype=torch.float16): mod(sp.replace_feature(x0))
    def gather_fwd():
        with torch.no_grad(): subm_conv(x0, t, w.detach(), kernel=False)
    row["spconv_fwd_ms"], row["gather_fwd_ms"] = timeit(sp_fwd, n), timeit(gather_fwd, n)
    rows.append(row); print(json.dumps(row), flush=True)
json.dump(dict(card=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               command="python3 bench/probes/conv_probe.py " + " ".join(sys.argv[1:]), rows=rows),
          open(os.path.join(os.environ.get("OUT", "/tmp"), "conv_probe.json"), "w"), indent=1)
