"""Block sizes of the Triton submanifold-convolution kernels (`sonata_nb.sparse_conv.CONV_CONFIG`) on the issue's batch.

    PYTHONPATH=. python bench/conv_tune.py --scan .benchdata/scannet/scene0000_00 --json $OUT/conv_tune.json

One ft-mode forward of the Sonata encoder (random weights) gives each stage's sparse tensor (its points and neighbour
table); then, per configuration, the forward + input-gradient kernel (`_sc_conv`, both directions) and the
weight-gradient kernel (`_sc_wgrad`) run on every stage's real table, float16, and are timed with CUDA events (median
of `--repeats` after warm-up), each stage's time weighted by its number of blocks (3, 3, 3, 12, 3): the total per
`ft` step. spconv's kernels on the same tensors are timed alongside as its module's forward + backward (which also
casts the weight and adds the bias: ~1 small launch more each way than the bare kernels timed for Triton; the
neighbour table, built once per stage, is not timed either). Each configuration's results are checked against the
gathers' (`gather_matmul`, `gather_weight_grad`) on every stage: one off by more than TOLERANCE is reported, never best. Prints the
best configuration of each kernel and the table; `--json` writes every measurement.
"""
import argparse, itertools, json, statistics, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import DEFAULT_SCAN, build, portable_command
import sonata_nb.model as M
import sonata_nb.sparse_conv as S
from sonata_nb.model import upcast
from sonata_nb.sparse_conv import neighbour_table

WIDTHS = ((32, 64), (64, 64), (64, 128))  # (widest BLOCK_I, widest BLOCK_O)
CONV_WIDTHS = WIDTHS + ((128, 64), (128, 128))  # the forward's too: one chunk of 128 at 96 channels takes `_sc_conv`'s flat loop


def grids(depths) -> tuple[list, list]:
    "The configurations tried: (forward + input gradient, weight gradient), each at every pipeline depth in `depths`"
    conv = [dict(bm=bm, wi=wi, wo=wo, warps=w, stages=st) for st, bm, (wi, wo), w in itertools.product(depths, (64, 128, 256), CONV_WIDTHS, (4, 8))
            if bm < 256 or w == 8]  # 256 rows: more products per byte a program reads (8 warps: 4 would spill the accumulator)
    wgrad = [dict(bm=bm, wi=wi, wo=wo, warps=w, stages=st, per_sm=ps, cells=cl)
             for st, bm, (wi, wo), w, ps, cl in itertools.product(depths, (64, 128), WIDTHS, (4, 8), (4, 8), (1, 3))
             if bm == 64 or (cl, ps) == (1, 4)]
    return conv, wgrad


def cuda_ms(fn, repeats:int) -> float:
    "Median milliseconds of `fn` by CUDA events after 3 warm-up calls"
    for _ in range(3): fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def stage_tensors(scan) -> list:
    "(stage key, blocks in it, x fp16, table, weight fp16 (C, 3, 3, 3, C), dy fp16, conv module, sparse tensor) per stage"
    model, head, data, labels = build("cuda", scan=scan)
    seen, caps = {}, []
    def hook(mod, inp, out):
        seen[mod.indice_key] = seen.get(mod.indice_key, 0) + 1
        if seen[mod.indice_key] == 1: caps.append((mod, inp[0]))
    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, M.SubMConv3d)]
    model.train()
    with torch.autocast("cuda", dtype=torch.float16): upcast(model(data))
    for h in hs: h.remove()
    out = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for mod, sp in caps:
        x = sp.features.detach().half().contiguous()
        t = neighbour_table(sp.indices, sp.spatial_shape, sp.batch_size, mod.kernel_size[0])
        w = mod.weight.detach().half().reshape(mod.out_channels, -1, mod.in_channels).contiguous()
        dy = torch.randn(len(x), mod.out_channels, device="cuda", generator=g).half()
        out.append((mod.indice_key, seen[mod.indice_key], x, t, w, dy, mod, sp))
    return out


TOLERANCE = 1e-2  # relative L2 error to the gathers above which a configuration is wrong, not a candidate (float16: ~1e-3)


def rel_err(a:torch.Tensor, b:torch.Tensor) -> float: return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def references(x, t, w, dy) -> tuple:
    "The gathers' forward, input gradient and weight gradient on a stage's tensors: what every configuration must give"
    co, K, ci = w.shape
    wt = w.flip(1).permute(2, 1, 0).reshape(ci, K * co)  # the input gradient's weight: W[o, K-1-k, c] at (c, k, o)
    return S.gather_matmul(x, t, w.reshape(co, -1)), S.gather_matmul(dy, t, wt), S.gather_weight_grad(dy, x, t).reshape(co, K, ci)


def config_error(kind:str, x, t, w, dy, refs) -> float:
    "The largest relative error of the kernels (the forward and the input gradient, or the weight gradient) to `refs`"
    if kind == "conv": return max(rel_err(S._triton_conv(x, t, w, flip=False), refs[0]), rel_err(S._triton_conv(dy, t, w, flip=True), refs[1]))
    return rel_err(S._triton_weight_grad(dy, x, t, *w.shape), refs[2])


def summarize(res:dict, rows:list, kinds:list, stages:list, quiet:bool=False):
    "res's best configuration of each kernel, and each stage's own best (the step's total were each stage to use its own)"
    res["rows"] = rows
    res["best"], res["best_per_stage"] = {}, {}
    for kind in kinds:
        ok = [r for r in rows if r["kind"] == kind and "step_ms" in r and r["max_rel_err"] <= TOLERANCE]
        if not ok: continue
        best = res["best"][kind] = min(ok, key=lambda r: r["step_ms"])
        per = [min(ok, key=lambda r: r["per_stage_ms"][i]) for i in range(len(stages))]
        total = sum(st[1] * r["per_stage_ms"][i] for i, (st, r) in enumerate(zip(stages, per)))
        res["best_per_stage"][kind] = dict(configs=[r["config"] for r in per], ms=[r["per_stage_ms"][i] for i, r in enumerate(per)], step_ms=total)
        if not quiet:
            print(f"{kind} best: {tuple(best['config'].values())} {best['step_ms']:.2f} ms per step; per stage:",
                  [(tuple(r["config"].values()), round(r["per_stage_ms"][i], 3)) for i, r in enumerate(per)], f"{total:.2f} ms per step")
    res["best_total_ms"] = sum(b["step_ms"] for b in res["best"].values())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scan", default=str(DEFAULT_SCAN))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", default=None)
    p.add_argument("--kinds", default="conv,wgrad", help="kernels to sweep: conv (forward + input gradient), wgrad")
    p.add_argument("--depths", default="2", help="software-pipeline depths (num_stages) to sweep, e.g. 2,3,4")
    args = p.parse_args(argv)
    CONV, WGRAD = grids([int(d) for d in args.depths.split(",")])
    kinds = args.kinds.split(",")
    if not kinds or set(kinds) - {"conv", "wgrad"}: p.error(f"--kinds takes conv and/or wgrad, got {args.kinds!r}")
    t0 = time.time()
    stages = stage_tensors(args.scan)
    res = dict(card=torch.cuda.get_device_name(), command=portable_command(["python3", "bench/conv_tune.py", *(argv if argv is not None else sys.argv[1:])]),
               stages=[dict(key=k, blocks=n, points=len(x), channels=x.shape[1]) for k, n, x, *_ in stages])
    # spconv's module, forward + backward, on each stage
    M.set_conv_backend("spconv")
    spconv_total = 0.0
    for key, n, x, t, w, dy, mod, sp in stages:
        xx = x.clone().requires_grad_()
        def step():
            with torch.autocast("cuda", dtype=torch.float16): y = mod(sp.replace_feature(xx)).features
            y.backward(dy)
        ms = cuda_ms(step, args.repeats)
        spconv_total += n * ms
    res["spconv_fwd_bwd_ms_per_step"] = spconv_total
    print(f"spconv forward + backward, all blocks: {spconv_total:.2f} ms", flush=True)
    refs = [references(x, t, w, dy) for key, n, x, t, w, dy, mod, sp in stages]
    rows = []
    for kind, configs in (("conv", CONV), ("wgrad", WGRAD)):
        if kind not in kinds: continue
        S.CONV_BY_WIDTH[kind] = {}  # every width takes the configuration under test
        for cfg in configs:
            S.CONV_CONFIG[kind] = tuple(cfg.values())
            total, per, err = 0.0, [], 0.0
            try:
                for (key, n, x, t, w, dy, mod, sp), ref in zip(stages, refs):
                    err = max(err, config_error(kind, x, t, w, dy, ref))
                    if kind == "conv":
                        ms = cuda_ms(lambda: (S._triton_conv(x, t, w, flip=False), S._triton_conv(dy, t, w, flip=True)), args.repeats)
                    else:
                        ms = cuda_ms(lambda: S._triton_weight_grad(dy, x, t, w.shape[0], w.shape[1], w.shape[2]), args.repeats)
                    per.append(ms); total += n * ms
            except Exception as e:  # e.g. out of shared memory for a large tile: not a candidate
                rows.append(dict(kind=kind, config=cfg, error=str(e)[:200])); continue
            rows.append(dict(kind=kind, config=cfg, per_stage_ms=per, step_ms=total, max_rel_err=err))
            print(kind, cfg, f"{total:.2f} ms per step", [round(v, 3) for v in per], f"error {err:.1e}" + (" WRONG" if err > TOLERANCE else ""), flush=True)
            if args.json:  # after every configuration: a sweep cut short by a time limit still leaves its results
                summarize(res, rows, kinds, stages, quiet=True)
                Path(args.json).write_text(json.dumps(res, indent=1))
    summarize(res, rows, kinds, stages)
    if set(kinds) == {"conv", "wgrad"}:  # spconv's time is forward and both gradients: only comparable to both kernels
        print(f"total {res['best_total_ms']:.2f} ms against spconv {spconv_total:.2f} ms", end="; ")
    print(f"{time.time() - t0:.0f} s")
    if args.json: Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
