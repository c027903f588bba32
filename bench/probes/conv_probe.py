"""Probe: each distinct SubMConv3d of the `ft` forward (first conv of every stage, and the stem) through spconv against a
gather + GEMM formulation on spconv's own neighbour table (`pair_fwd`, (K, N), -1 where absent), forward + backward
under fp16 autocast. Usage: python bench/probes/conv_probe.py SCAN_DIR [REPEATS]"""
import sys, json, os, statistics, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")); sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from steps import build
import sonata_nb.model as M
from sonata_nb.model import upcast
from sonata_nb.sparse_conv import neighbour_table, subm_conv
M.set_conv_backend("spconv")  # the model's convolutions through spconv (its maps); ours below

def gather_conv(x, pair, w): # x (N, Cin) fp16, pair (K, N) int32, w (Cout, K, Cin) fp16
    idx = pair.t().contiguous().long(); idx = torch.where(idx < 0, x.shape[0], idx)
    xz = torch.cat([x, x.new_zeros(1, x.shape[1])])
    cols = xz[idx].view(x.shape[0], -1)
    return cols @ w.reshape(w.shape[0], -1).t()

class GatherConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pair, w):
        ctx.save_for_backward(x, pair, w)
        return gather_conv(x, pair, w)
    @staticmethod
    def backward(ctx, g):
        x, pair, w = ctx.saved_tensors
        K = w.shape[1]
        dx = gather_conv(g, pair, w.flip(1).transpose(0, 2).contiguous())  # mirrored offsets, transposed weights
        idx = pair.t().contiguous().long(); idx = torch.where(idx < 0, x.shape[0], idx)
        cols = torch.cat([x, x.new_zeros(1, x.shape[1])])[idx].view(x.shape[0], -1)
        dw = (g.t() @ cols).view(w.shape)
        return dx, None, dw

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
    x0 = sp.features.detach().to(torch.float16 if DEV == 'cuda' else torch.float32)
    N, C, K = x0.shape[0], x0.shape[1], mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]
    row = dict(key=mod.indice_key, N=N, cin=mod.in_channels, cout=mod.out_channels, K=K)
    pair = mp.pair_fwd if hasattr(mp, "pair_fwd") else None
    if pair is None: pair = torch.where((t0 := neighbour_table(sp.indices, sp.spatial_shape, sp.batch_size, mod.kernel_size[0])) == N, -1, t0).t().int()
    g = torch.randn(N, mod.out_channels, device=DEV, dtype=x0.dtype)
    x = x0.clone().requires_grad_(True)
    def sp_step():
        x.grad = None; mod.weight.grad = None
        with torch.autocast(DEV, dtype=torch.float16):
            out = mod(sp.replace_feature(x))
        out.features.backward(g)
        return out.features
    wv = mod.weight.detach().view(mod.out_channels, K, mod.in_channels)
    w = wv.clone().requires_grad_(True)
    def ga_step():
        x.grad = None; w.grad = None
        out = GatherConv.apply(x, pair, w.to(x0.dtype)) + (mod.bias.to(x0.dtype) if mod.bias is not None else 0)
        out.backward(g)
        return out
    o1 = sp_step(); dx1, dw1 = x.grad.float().clone(), mod.weight.grad.float().view(wv.shape).clone()
    o2 = ga_step(); dx2, dw2 = x.grad.float().clone(), w.grad.float().clone()
    rel = lambda a, b: ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()
    row.update(out_rel=rel(o2, o1), dx_rel=rel(dx2, dx1), dw_rel=rel(dw2, dw1))
    # symmetry of the map: the mirrored offset of a neighbour points back
    p = pair.long(); Kc = K // 2
    ok = True
    for k in (0, Kc - 1, K - 1):
        i = torch.nonzero(p[k] >= 0).squeeze(1)
        ok &= bool((p[K - 1 - k][p[k][i]] == i).all())
    row["symmetric"] = ok
    row["spconv_ms"] = timeit(sp_step, n); row["gather_ms"] = timeit(ga_step, n)
    def fwd_only():
        with torch.no_grad(): gather_conv(x0, pair, wv.to(x0.dtype))
    def sp_fwd():
        with torch.no_grad(), torch.autocast(DEV, dtype=torch.float16): mod(sp.replace_feature(x0))
    row["spconv_fwd_ms"] = timeit(sp_fwd, n); row["gather_fwd_ms"] = timeit(fwd_only, n)
    ks = mod.kernel_size[0]
    t = neighbour_table(sp.indices, sp.spatial_shape, sp.batch_size, ks)
    row["table_ms"] = timeit(lambda: neighbour_table(sp.indices, sp.spatial_shape, sp.batch_size, ks), n)
    row["table_eq_pair"] = bool((torch.where(t == N, -1, t) == pair.t().long()).all())
    def own_step():
        x.grad = None; w.grad = None
        out = subm_conv(x, t, w.view(mod.weight.shape).to(x0.dtype)) + (mod.bias.to(x0.dtype) if mod.bias is not None else 0)
        out.backward(g)
    row["own_ms"] = timeit(own_step, n)
    rows.append(row); print(json.dumps(row), flush=True)
json.dump(dict(card=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               command="python3 bench/probes/conv_probe.py " + " ".join(sys.argv[1:]), rows=rows),
          open(os.path.join(os.environ.get("OUT", "/tmp"), "conv_probe.json"), "w"), indent=1)
