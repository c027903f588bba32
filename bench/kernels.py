"""GPU micro-benchmark of the fused Triton LayerNorm (`sonata_nb.kernels.fused_layer_norm`) against torch's, on the
LayerNorm shapes of the Sonata encoder at the issue-9 batch (3 x scene0000_00, 239,901 points; rows per stage from
the 2 cm grid and its poolings), as the model calls them under fp16 autocast:

- `fp32 in`: a float32 input (the residual stream under autocast), float32 output (torch's autocast layer_norm);
- `fp16 in`: a float16 input (a Linear's output, e.g. GridPooling / CPE), float32 output;
- `fp32 in, fp16 out`: the pre-norms of a Block (`feeds_linear`): torch = layer_norm then the Linear's cast to
  float16; fused = one kernel writing float16.

For each: forward and forward + backward (dx, dweight, dbias) times (CUDA events, median of --repeats after 3
warm-ups), speed-up, effective bandwidth of the fused forward, and the max abs error of both against float64
(output and dx). With --tiles, the fused kernels are also timed with other tile sizes (the tile of kernels.ROW_CONFIG's ln_fwd and ln_bwd). With --model,
a Sonata-width encoder (one block per stage, random weights) on a toy batch checks the switches end to end: relative
L2 of the fp16-autocast up-cast features and of the parameter gradients, fused against torch's LayerNorm and both
against float32, and set_mlp_recompute against the plain MLP.

    python bench/kernels.py --json bench/results/kernels_h100.json     # < 60 s on one H100
"""
import argparse, datetime, json, platform, statistics, sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`
from sonata_nb import kernels
sys.path.insert(0, str(ROOT / "bench"))
from steps import portable_command

# (rows, channels): stage 0..4 of the encoder at the issue batch, and the up-cast features
SHAPES = [(239_901, 48), (194_994, 96), (81_990, 192), (21_582, 384), (5_130, 512), (239_901, 1232)]  # counted 2026-12-08
CASES = {"fp32 in": (torch.float32, None), "fp16 in": (torch.float16, None), "fp32 in, fp16 out": (torch.float32, torch.float16)}


def timed(fn, repeats:int, warmup:int=3) -> float:
    "Median milliseconds of `fn()` over `repeats` runs, CUDA events"
    for _ in range(warmup): fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def run_case(N:int, C:int, in_dtype, out_dtype, repeats:int, tiles:list[int]) -> dict:
    g = torch.Generator(device="cuda").manual_seed(N + C)
    x = (torch.randn(N, C, device="cuda", generator=g) * 2 + 0.3).to(in_dtype)
    w = torch.rand(C, device="cuda", generator=g) + 0.5
    b = torch.randn(C, device="cuda", generator=g) * 0.1
    dy_dtype = out_dtype or torch.float32
    dy = torch.randn(N, C, device="cuda", generator=g).to(dy_dtype)
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))

    def torch_fwd(x=x, w=w, b=b):
        with torch.autocast("cuda", dtype=torch.float16):
            y = F.layer_norm(x, (C,), w, b)
            return y.to(out_dtype) if out_dtype is not None else y

    def fused_fwd(x=x, w=w, b=b):
        with torch.autocast("cuda", dtype=torch.float16): return kernels.fused_layer_norm(x, w, b, 1e-5, out_dtype)

    def fwd_bwd(f):
        def run():
            xg.grad = wg.grad = bg.grad = None
            f(xg, wg, bg).backward(dy)
        return run

    with torch.no_grad():
        res = dict(rows=N, channels=C, input=str(in_dtype).replace("torch.", ""), output=str(dy_dtype).replace("torch.", ""))
        res["torch_fwd_ms"], res["fused_fwd_ms"] = timed(torch_fwd, repeats), timed(fused_fwd, repeats)
    res["torch_fwdbwd_ms"], res["fused_fwdbwd_ms"] = timed(fwd_bwd(torch_fwd), repeats), timed(fwd_bwd(fused_fwd), repeats)
    nbytes = N * C * (x.element_size() + torch.empty((), dtype=dy_dtype).element_size())
    res["fused_fwd_GBps"] = nbytes / res["fused_fwd_ms"] / 1e6
    for name, t in (("fwd", "fused_fwd_ms"), ("fwdbwd", "fused_fwdbwd_ms")):
        res[f"speedup_{name}"] = res[t.replace("fused", "torch")] / res[t]
    if tiles:
        saved, res["fused_fwd_ms_by_tile"], res["fused_fwdbwd_ms_by_tile"] = dict(kernels.ROW_CONFIG), {}, {}
        by_width = {k: kernels.ROW_BY_WIDTH[k].pop(C, None) for k in ("ln_fwd", "ln_bwd")}  # the tile under test at this width too
        try:
            for tile in tiles:
                for k in by_width: kernels.ROW_CONFIG[k] = (tile, saved[k][1], min(16, max(4, tile // 512)))  # ~16 elements a thread
                with torch.no_grad(): res["fused_fwd_ms_by_tile"][tile] = timed(fused_fwd, repeats)
                res["fused_fwdbwd_ms_by_tile"][tile] = timed(fwd_bwd(fused_fwd), repeats)
        finally:
            kernels.ROW_CONFIG.update(saved)
            for k, v in by_width.items():
                if v is not None: kernels.ROW_BY_WIDTH[k][C] = v
    # errors against float64, forward output and dx (dweight and dbias: relative, they are sums over the rows)
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, w, b))
    r = F.layer_norm(x64, (C,), w64, b64, 1e-5)
    r.backward(dy.double())
    for name, f in (("torch", torch_fwd), ("fused", fused_fwd)):
        xg.grad = wg.grad = bg.grad = None
        y = f(xg, wg, bg)
        y.backward(dy)
        res[f"{name}_max_err_y"] = (y.double() - r).abs().max().item()
        res[f"{name}_max_err_dx"] = (xg.grad.double() - x64.grad).abs().max().item()
        res[f"{name}_rel_err_dw"] = ((wg.grad.double() - w64.grad).norm() / w64.grad.norm()).item()
        res[f"{name}_rel_err_db"] = ((bg.grad.double() - b64.grad).norm() / b64.grad.norm()).item()
    del xg, x64, r
    torch.cuda.empty_cache()
    return res


def model_check(points:int=60_000) -> dict:
    "set_fused_layernorm on a slim Sonata-width encoder under fp16 autocast: the same features and gradients"
    from sonata_nb import model as M
    from sonata_nb.testing import toy_cloud
    torch.manual_seed(0)
    enc = M.PointTransformerV3(**{**M.SONATA_CONFIG, "enc_depths": (1, 1, 1, 1, 1), "shuffle_orders": False}).cuda().eval()  # no drop path
    data = {k: v.cuda() for k, v in toy_cloud(n=points // 2, grid=0.02).items()}
    defaults = (M._fused_layernorm, M._mlp_recompute)
    def run(fused:bool, amp:bool, recompute:bool=False):
        M.set_fused_layernorm(fused); M.set_mlp_recompute(recompute)
        try:
            enc.zero_grad()
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                feat = M.upcast(enc({k: v.clone() for k, v in data.items()}))
            feat.float().square().mean().backward()
            return feat.detach().float(), torch.cat([q.grad.flatten() for q in enc.parameters()]).clone()
        finally: M.set_fused_layernorm(defaults[0]); M.set_mlp_recompute(defaults[1])
    def rel(a, b): return ((a.double() - b.double()).norm() / b.double().norm()).item()
    f32, g32 = run(False, False)
    t16, tg16 = run(False, True)
    f16, fg16 = run(True, True)
    f32f, g32f = run(True, False)
    r16, rg16 = run(False, True, recompute=True)
    t16b, tg16b = run(False, True)  # scale: the same torch run again (parameter gradients are not reproducible, see README)
    return dict(points=len(data["coord"]), fused_vs_torch_fp16_feat=rel(f16, t16), fused_vs_torch_fp16_grad=rel(fg16, tg16),
                torch_fp16_vs_fp32_feat=rel(t16, f32), fused_fp16_vs_fp32_feat=rel(f16, f32),
                torch_fp16_vs_fp32_grad=rel(tg16, g32), fused_fp16_vs_fp32_grad=rel(fg16, g32),
                fused_vs_torch_fp32_feat=rel(f32f, f32), fused_vs_torch_fp32_grad=rel(g32f, g32),
                mlp_recompute_vs_plain_fp16_feat=rel(r16, t16), mlp_recompute_vs_plain_fp16_grad=rel(rg16, tg16),
                torch_fp16_rerun_feat=rel(t16b, t16), torch_fp16_rerun_grad=rel(tg16b, tg16))


def table(rows:list[dict]) -> str:
    out = ["| rows × C | in → out | torch fwd ms | fused fwd ms | × | fused GB/s | torch fwd+bwd ms | fused fwd+bwd ms | × "
           "| max err y torch / fused | max err dx torch / fused |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['rows']:,} × {r['channels']} | {r['input']} → {r['output']} | {r['torch_fwd_ms']:.3f} | "
                   f"{r['fused_fwd_ms']:.3f} | {r['speedup_fwd']:.2f} | {r['fused_fwd_GBps']:.0f} | {r['torch_fwdbwd_ms']:.3f} | "
                   f"{r['fused_fwdbwd_ms']:.3f} | {r['speedup_fwdbwd']:.2f} | {r['torch_max_err_y']:.1e} / {r['fused_max_err_y']:.1e} | "
                   f"{r['torch_max_err_dx']:.1e} / {r['fused_max_err_dx']:.1e} |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (median)")
    p.add_argument("--tiles", default="", help="comma-separated LayerNorm tiles (elements) to time too, e.g. 2048,8192")
    p.add_argument("--cases", default=";".join(CASES), help=f"semicolon-separated subset of {list(CASES)}")
    p.add_argument("--model", action="store_true", help="also check set_fused_layernorm on a slim Sonata-width encoder")
    args = p.parse_args(argv)
    if not torch.cuda.is_available(): p.error("bench/kernels.py needs a CUDA GPU")
    if not kernels.available(): p.error("Triton is not installed (pip install triton)")
    if kernels.interpreted(): p.error("unset TRITON_INTERPRET: this benchmark times the compiled kernels")
    cases = [c.strip() for c in args.cases.split(";") if c.strip()]  # (case names contain commas)
    bad = [c for c in cases if c not in CASES]
    if bad: p.error(f"unknown --cases {bad}; choose from {list(CASES)}")
    tiles = [int(t) for t in args.tiles.split(",") if t.strip()]
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                device=torch.cuda.get_device_name(), torch=torch.__version__,
                triton=__import__("triton").__version__, python=platform.python_version(),
                command=portable_command(["python", "bench/kernels.py"] + (argv if argv is not None else sys.argv[1:])),
                repeats=args.repeats, row_config=dict(kernels.ROW_CONFIG), row_by_width=dict(kernels.ROW_BY_WIDTH))
    rows, checks = [], {}
    if args.model:
        checks = model_check()
        print("model check (relative L2):", json.dumps(checks, indent=1))
    for case in cases:
        in_dtype, out_dtype = CASES[case]
        for N, C in SHAPES:
            rows.append(dict(case=case, **run_case(N, C, in_dtype, out_dtype, args.repeats, tiles)))
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(dict(meta=meta, model_check=checks, results=rows), indent=1))
    print(f"{meta['device']}, torch {meta['torch']}, triton {meta['triton']}, {meta['date']}; median of {args.repeats}")
    print(table(rows))
    if tiles:
        print("\nfused fwd / fwd+bwd ms by LayerNorm tile:")
        for r in rows:
            print(f"{r['case']:>18} {r['rows']:>7} x {r['channels']:<5}",
                  " ".join(f"{t}: {r['fused_fwd_ms_by_tile'][t]:.3f}/{r['fused_fwdbwd_ms_by_tile'][t]:.3f}" for t in tiles))


if __name__ == "__main__":
    main()
