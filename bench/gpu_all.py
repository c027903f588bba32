"""All speed variants of the issue's benchmark in one go (one GPU): baseline, each lever alone, all levers together.

    PYTHONPATH=. python bench/gpu_all.py                    # H200: 3 x scene0000_00 from .benchdata/scannet/
    PYTHONPATH=. python bench/gpu_all.py --scan /path/to/scans/scene0000_00
    PYTHONPATH=. python bench/gpu_all.py --device cpu --tiny --crop 500 --repeats 1 --warmup 0   # CPU check

Builds the batch once (3 copies of the grid-sampled scan), then for each variant: median of `--repeats` (after
`--warmup`) synchronized runs of infer / lin / ft, the ft peak memory (reset between variants), and the relative L2
distance of the variant's inference output to the baseline's (a broken lever shows up there; the baseline's own
distance to float32 is given for scale). Profiles (bench/steps.py) the baseline and "all" (short). Variants are
skipped, and said so, when `--budget` seconds are spent. Writes gpu_all.json under $OUT (default bench/out/).
Levers: half_ln = LayerNorm in the activation dtype; spconv_native / spconv_split = spconv algorithm Native /
MaskSplitImplicitGemm (baseline: MaskImplicitGemm); compile_mlp = torch.compile(dynamic=True) of every block MLP;
sdpa_flash / sdpa_efficient = torch SDPA restricted to its flash / memory-efficient kernel (baseline: torch's pick);
fused_ln = Triton LayerNorm (model.set_fused_layernorm); mlp_recompute = MLPs save fc1's output only and recompute
the GELU in the backward (model.set_mlp_recompute, a memory lever);
all = half_ln + the fastest spconv algorithm + the fastest SDPA kernel (by ft step) + fused_ln and mlp_recompute when
they ran; then compile_mlp and all+compile_mlp when time is left. `--variants` picks the single-lever variants
(default: all of them), e.g. `--variants fused_ln,mlp_recompute --no-compile` for the new levers only.
"""
import argparse, contextlib, json, os, sys, time, traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import DEFAULT_SCAN, TASKS, amp_dtype, build, profile_fn, profile_table, step_fn, sync, time_fn
from sonata_nb.model import MLP, set_fused_layernorm, set_half_layernorm, set_mlp_recompute, set_spconv_algo, upcast


def compile_mlps(model, on:bool):
    "Swap every MLP's forward for a torch.compile(dynamic=True) one (on) or back (off)"
    for m in model.modules():
        if isinstance(m, MLP):
            if on and "forward" not in m.__dict__: m.forward = torch.compile(m.forward, dynamic=True)
            if not on and "forward" in m.__dict__: del m.forward


def apply(model, lev:dict):
    "Set the levers of a variant (everything else at the baseline)"
    set_half_layernorm(lev.get("half_ln", False))
    set_fused_layernorm(lev.get("fused_ln", False))
    set_mlp_recompute(lev.get("mlp_recompute", False))
    set_spconv_algo(lev.get("spconv"))
    compile_mlps(model, lev.get("compile", False))


def sdpa_context(lev:dict):
    "torch SDPA kernel choice of a variant (None: torch's own pick, cuDNN attention on an H200)"
    if not lev.get("sdpa"): return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([dict(flash=SDPBackend.FLASH_ATTENTION, efficient=SDPBackend.EFFICIENT_ATTENTION,
                             cudnn=SDPBackend.CUDNN_ATTENTION)[lev["sdpa"]]])


def in_context(fn, lev):
    def run():
        with sdpa_context(lev): return fn()
    return run


VARIANTS = dict(half_ln=dict(half_ln=True), fused_ln=dict(fused_ln=True), mlp_recompute=dict(mlp_recompute=True),
                **{"fused_ln+half_ln": dict(fused_ln=True, half_ln=True),
                   "fused_ln+mlp_recompute": dict(fused_ln=True, mlp_recompute=True)},
                spconv_native=dict(spconv="native"), spconv_split=dict(spconv="mask_split_implicit_gemm"),
                sdpa_flash=dict(sdpa="flash"), sdpa_efficient=dict(sdpa="efficient"))


def rel_l2(a, b) -> float: return ((a.float() - b.float()).norm() / b.float().norm()).item()


def run_variant(name, lev, model, head, data, labels, args, ref) -> dict:
    dev = args.device
    apply(model, lev)
    if dev.startswith("cuda"): torch.cuda.empty_cache()
    res = dict(variant=name, levers=lev)
    t0 = time.perf_counter()
    try:
        for task in TASKS:
            if task == "ft" and dev.startswith("cuda"):
                sync(dev); torch.cuda.reset_peak_memory_stats()
            res[task] = time_fn(in_context(step_fn(task, model, head, data, labels), lev), dev, args.repeats, args.warmup)
            if task == "ft" and dev.startswith("cuda"): res["ft_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out = in_context(step_fn("infer", model, head, data, labels), lev)()
        res["rel_l2_vs_baseline"] = 0.0 if ref is None else rel_l2(out, ref)
    except Exception as e:  # a broken lever must not stop the others
        res["error"] = f"{type(e).__name__}: {e}"[:500]
        traceback.print_exc()
        out = None
    res["seconds"] = time.perf_counter() - t0
    print(f"[{time.strftime('%H:%M:%S')}] {name}: " + (res.get("error") or " ".join(
        f"{t} {res[t]['median_ms']:.1f} ms" for t in TASKS)), file=sys.stderr, flush=True)
    return res, out


def table(rows, args, env) -> str:
    mem = args.device.startswith("cuda")
    lines = [f"{env['device']}, torch {env['torch']}, {env['points']:,} points ({env['copies']} x {env['scan_points']:,}), "
             f"autocast {env['amp']}, median of {args.repeats} after {args.warmup} warm-ups", "",
             "| variant | inference ms | `lin` step ms | `ft` step ms | `ft` peak GiB | rel. L2 to baseline (infer) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['variant']} | {r.get('error') or r['skipped']} | | | | |"); continue
        lines.append(f"| {r['variant']} | {r['infer']['median_ms']:.1f} | {r['lin']['median_ms']:.1f} | "
                     f"{r['ft']['median_ms']:.1f} | {r['ft_peak_gib']:.2f} | {r['rel_l2_vs_baseline']:.2e} |" if mem else
                     f"| {r['variant']} | {r['infer']['median_ms']:.1f} | {r['lin']['median_ms']:.1f} | "
                     f"{r['ft']['median_ms']:.1f} | n/a | {r['rel_l2_vs_baseline']:.2e} |")
    if rows and "baseline_rel_l2_vs_fp32" in rows[0]:
        lines += ["", f"Scale: the baseline's own {env['amp']} inference output is {rows[0]['baseline_rel_l2_vs_fp32']:.2e} "
                      "(relative L2) from float32."]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--scan", default=str(DEFAULT_SCAN), help="ScanNet scans/<scene> folder (raw _vh_clean_2.ply)")
    p.add_argument("--copies", type=int, default=3)
    p.add_argument("--crop", type=int, default=None, help="keep this many points of the scene (CPU checks)")
    p.add_argument("--tiny", action="store_true", help="narrow encoder (CPU check of the script)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--profile-steps", type=int, default=2, help="0: no profiles")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
    p.add_argument("--budget", type=float, default=330, help="seconds after which remaining variants are skipped")
    p.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).resolve().parent / "out"))
    args = p.parse_args(argv)
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    if [v for v in chosen if v not in VARIANTS]: p.error(f"unknown --variants {[v for v in chosen if v not in VARIANTS]}; choose from {list(VARIANTS)}")
    start = time.perf_counter()
    torch.backends.cudnn.benchmark = True
    out_dir = Path(args.out); out_dir.mkdir(parents=True, exist_ok=True)
    model, head, data, labels = build(args.device, args.tiny, args.scan, args.copies, args.crop)
    n = len(data["coord"])
    env = dict(device=torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu", torch=torch.__version__,
               points=n, copies=args.copies, scan_points=n // args.copies, amp=str(amp_dtype(args.device)).split(".")[-1],
               tiny=args.tiny, scan=Path(args.scan).name, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    try:
        import spconv; env["spconv"] = getattr(spconv, "__version__", "?")
    except ImportError: pass
    report = dict(env=env, variants=[], profiles={})
    def save(): (out_dir / "gpu_all.json").write_text(json.dumps(report, indent=1))

    apply(model, {})
    with torch.no_grad():  # the baseline's own float32 distance, for scale
        fp32 = upcast(model.eval()(data))
    base, ref = run_variant("baseline", {}, model, head, data, labels, args, None)
    ref_out = ref
    if ref is not None: base["baseline_rel_l2_vs_fp32"] = rel_l2(ref, fp32)
    del fp32
    report["variants"].append(base); save()
    if args.profile_steps:
        report["profiles"]["baseline"] = {t: profile_fn(step_fn(t, model, head, data, labels), args.device, args.profile_steps)
                                          for t in TASKS}
        save()
    variants = [(name, VARIANTS[name]) for name in chosen]
    for name, lev in variants:
        if time.perf_counter() - start > args.budget: report["variants"].append(dict(variant=name, skipped="time budget")); continue
        r, _ = run_variant(name, lev, model, head, data, labels, args, ref_out)
        report["variants"].append(r); save()
    ok = {r["variant"]: r for r in report["variants"] if "ft" in r}
    spconv_best = min((("spconv_native", "native"), ("spconv_split", "mask_split_implicit_gemm"), ("baseline", None)),
                      key=lambda v: ok[v[0]]["ft"]["median_ms"] if v[0] in ok else float("inf"))[1]
    sdpa_best = min((("sdpa_flash", "flash"), ("sdpa_efficient", "efficient"), ("baseline", None)),
                    key=lambda v: ok[v[0]]["ft"]["median_ms"] if v[0] in ok else float("inf"))[1]
    all_lev = dict(half_ln=True, spconv=spconv_best, sdpa=sdpa_best, fused_ln="error" not in ok.get("fused_ln", {"error": 1}),
                   mlp_recompute="error" not in ok.get("mlp_recompute", {"error": 1}))
    r, _ = run_variant("all", all_lev, model, head, data, labels, args, ref_out)
    report["variants"].append(r); save()
    if args.profile_steps and "error" not in r and time.perf_counter() - start < args.budget:
        apply(model, all_lev)
        report["profiles"]["all"] = {t: profile_fn(in_context(step_fn(t, model, head, data, labels), all_lev), args.device,
                                                   args.profile_steps)
                                     for t in TASKS}
        save()
    print(table(report["variants"], args, env), flush=True)  # before the (slow to compile) optional variants
    if not args.no_compile:
        for name, lev in (("compile_mlp", dict(compile=True)), ("all+compile_mlp", {**all_lev, "compile": True})):
            if time.perf_counter() - start > args.budget: report["variants"].append(dict(variant=name, skipped="time budget")); continue
            r, _ = run_variant(name, lev, model, head, data, labels, args, ref_out)
            report["variants"].append(r); save()
    apply(model, {})
    report["seconds"] = time.perf_counter() - start
    save()
    for key, prof in report["profiles"].items():  # shortened here; gpu_all.json holds the top 15 per task
        print(f"\n### Profile: {key}\n")
        print("\n\n".join(profile_table(t, {**r, "top": r["top"][:8]}) for t, r in prof.items()))
    print(f"\n{report['seconds']:.0f} s in all; {out_dir / 'gpu_all.json'}\n")
    print(table(report["variants"], args, env))  # last, so that it survives a truncated log
    return report


if __name__ == "__main__":
    main()
