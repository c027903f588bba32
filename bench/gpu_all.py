"""All speed variants of the issue's benchmark in one go (one GPU): baseline, each lever alone, all levers together.

    PYTHONPATH=. python bench/gpu_all.py                    # H200: 3 x scene0000_00 from .benchdata/scannet/
    PYTHONPATH=. python bench/gpu_all.py --scan /path/to/scans/scene0000_00
    PYTHONPATH=. python bench/gpu_all.py --device cpu --tiny --crop 500 --repeats 1 --warmup 0   # CPU check

Builds the batch once (3 copies of the grid-sampled scan), then, `--rounds` times (interleaved, medians over the
rounds since the card is shared), the baseline and each of `--variants`: median of `--repeats` (after `--warmup`)
synchronized runs of infer / lin / ft with their host time (until the call returns, before the synchronize), the ft
peak memory and the memory kept from the ft forward for the backward, and the relative L2 distance of the variant's
inference output to the baseline's (a broken lever shows up there; the baseline's own distance to float32 is given for
scale). Profiles (bench/steps.py: kernels; cProfile: Python host side) of the baseline and of fused_ln_half in the first
round. Variants are skipped, and said so, when `--budget` seconds are spent. Writes gpu_all.json under $OUT (default
bench/out/) after every variant. Levers (VARIANTS): fused_ln = Triton LayerNorm (`set_fused_layernorm`); half_ln =
LayerNorm in the activation dtype; mlp_recompute = MLP GELU recomputed in backward (`set_mlp_recompute`);
spconv_native / spconv_split = spconv algorithm Native / MaskSplitImplicitGemm (baseline: MaskImplicitGemm);
sdpa_flash / sdpa_efficient = torch SDPA restricted to its flash / memory-efficient kernel (baseline: torch's pick; only
where SDPA runs: with the patch-attention kernel on, combine them with sdpa_attention);
compile_mlp = torch.compile(dynamic=True) of every block MLP; no_graphs = each stage's blocks run one by one in
inference (baseline: replayed as one CUDA graph, `set_block_graphs`); graphs_stage3 = only stages with 3 or more blocks
after the first (MIN_REPLAYS = 3: Sonata's stage 3); spconv_sort = neighbour-map masks sorted by spconv's thrust
(baseline: torch.sort, `set_torch_map_sort`); frozen_half = half-precision LayerNorm where no gradient flows through it
(`set_half_layernorm("frozen")`: inference and the frozen encoder of lin; fused on CUDA); block0_eager = every stage's
first block runs as it is, the GPU running it while the host captures the template (`_whole_stages = False`);
fp32_ln = torch's float32 LayerNorm under autocast (`set_half_layernorm(False)`); no_mlp_recompute = the MLPs save
GELU's output (`set_mlp_recompute(False)`); sdpa_attention = the SDPA attention path (gathered q/k/v, torch's
attention, scatter) instead of the Triton patch-attention kernel (`set_attention_backend("sdpa")`; baseline: "auto",
the kernel on CUDA under autocast, unless flash_attn is installed: then flash-attn's kernel); torch_ln = torch's
LayerNorm kernels for the float32 norms (`set_fused_layernorm(False)`; baseline: the fused Triton kernel on CUDA);
bias_kernel / torch_bias_grad = Linear bias gradients by the column-sum kernel / by torch's sum
(`sonata_nb.kernels.set_bias_grad_kernel(True / False)`; baseline: the library's default, torch's sum); triton_launch = every Triton kernel launched through Triton's `kernel[grid]` (per-call
specialization; `sonata_nb.kernels.set_fast_launch(False)`; baseline: `kernels.Launcher`'s direct launches); one_pass_bwd =
the patch attention's backward in one kernel, dq added atomically (`sonata_nb.attention_kernel.set_one_pass_backward`;
baseline: a dk/dv kernel, then a dq kernel); torch_residual = the training blocks' DropPath branches added by torch's
operations (`sonata_nb.model.set_fused_residual(False)`; baseline: `kernels.residual_drop_path`, one kernel each way);
gather_conv / triton_conv / spconv_conv = the blocks' submanifold convolutions everywhere by `sparse_conv.subm_conv` on a
torch-built neighbour table, gathered rows and cuBLAS / Triton implicit-GEMM kernels, or by spconv's kernels
(`sonata_nb.model.set_conv_backend("gather" / "triton" / "spconv")`; baseline: "auto", Triton's where a gradient flows,
spconv's elsewhere). The baseline is the library's defaults.
Each variant's inference output is also compared with the float32 output (`rel_l2_vs_fp32`).
"""
import argparse, contextlib, json, os, sys, time, traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import (batch_arguments, TASKS, amp_dtype, build, ft_memory, host_profile, profile_fn, profile_table, step_fn,
                   sync, time_fn)
import sonata_nb.attention as A
import sonata_nb.model as M
DEFAULT_CONV = getattr(M, "_conv_backend", "spconv")  # the library's convolution backend at import (env included)
import sonata_nb.kernels as K
import sonata_nb.attention_kernel as AK
from sonata_nb.model import MLP, set_half_layernorm, set_spconv_algo, upcast


def compile_mlps(model, on:bool):
    "Swap every MLP's forward for a torch.compile(dynamic=True) one (on) or back (off)"
    for m in model.modules():
        if isinstance(m, MLP):
            if on and "forward" not in m.__dict__: m.forward = torch.compile(m.forward, dynamic=True)
            if not on and "forward" in m.__dict__: del m.forward


_MIN_REPLAYS = getattr(M, "MIN_REPLAYS", None)  # the library's defaults: the baseline
_SWITCHES = (("half_ln", "set_half_layernorm", "_half_layernorm", False), ("fused_ln", "set_fused_layernorm", "_fused_layernorm", False),
             ("mlp_recompute", "set_mlp_recompute", "_mlp_recompute", False), ("graphs", "set_block_graphs", "_block_graphs", True),
             ("torch_sort", "set_torch_map_sort", "_torch_map_sort", True),
             ("fused_residual", "set_fused_residual", "_fused_residual", False))
_DEFAULTS = {key: getattr(M, attr, default) for key, _, attr, default in _SWITCHES}
_DEFAULTS["whole"] = getattr(M, "_whole_stages", True)
_K_DEFAULTS = dict(bias_kernel=getattr(K, "_bias_grad_kernel", False))


def apply(model, lev:dict):
    "Set the levers of a variant (everything else at the library's defaults)"
    set_spconv_algo(lev.get("spconv"))
    if hasattr(M, "set_conv_backend"): M.set_conv_backend(lev.get("conv", DEFAULT_CONV))
    elif "conv" in lev: raise RuntimeError("this checkout has no sonata_nb.model.set_conv_backend")
    compile_mlps(model, lev.get("compile", False))
    for key, switch, _, _ in _SWITCHES:
        if hasattr(M, switch): getattr(M, switch)(lev.get(key, _DEFAULTS[key]))
        elif lev.get(key, _DEFAULTS[key]) != _DEFAULTS[key]: raise RuntimeError(f"this checkout has no sonata_nb.model.{switch}")
    if hasattr(K, "set_bias_grad_kernel"): K.set_bias_grad_kernel(lev.get("bias_kernel", _K_DEFAULTS["bias_kernel"]))
    elif lev.get("bias_kernel", False): raise RuntimeError("this checkout has no sonata_nb.kernels.set_bias_grad_kernel")
    if hasattr(K, "set_fast_launch"): K.set_fast_launch(lev.get("fast_launch", True))
    elif not lev.get("fast_launch", True): raise RuntimeError("this checkout has no sonata_nb.kernels.set_fast_launch")
    if hasattr(M, "_whole_stages"): M._whole_stages = lev.get("whole", _DEFAULTS["whole"])
    elif not lev.get("whole", True): raise RuntimeError("this checkout has no sonata_nb.model._whole_stages")
    if hasattr(M, "MIN_REPLAYS"): M.MIN_REPLAYS = lev.get("min_replays", _MIN_REPLAYS)
    if hasattr(AK, "set_one_pass_backward"): AK.set_one_pass_backward(lev.get("one_pass", False))
    elif lev.get("one_pass", False): raise RuntimeError("this checkout has no sonata_nb.attention_kernel.set_one_pass_backward")
    if "triton" in A.BACKENDS: A.set_attention_backend(lev.get("attention", "auto"))
    elif lev.get("attention", "auto") != "auto": raise RuntimeError("this checkout has no attention backend 'triton'")


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


def rel_l2(a, b) -> float: return ((a.float() - b.float()).norm() / b.float().norm()).item()


def run_variant(name, lev, model, head, data, labels, args, ref, fp32=None) -> dict:
    dev = args.device
    if dev.startswith("cuda"): torch.cuda.empty_cache()
    res = dict(variant=name, levers=lev)
    t0 = time.perf_counter()
    try:
        apply(model, lev)
        for task in TASKS:
            if task == "ft" and dev.startswith("cuda"):
                sync(dev); torch.cuda.reset_peak_memory_stats()
            res[task] = time_fn(in_context(step_fn(task, model, head, data, labels), lev), dev, args.repeats, args.warmup)
            if task == "ft" and dev.startswith("cuda"):
                res["ft_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                with sdpa_context(lev): res["ft_memory"] = ft_memory(model, head, data, labels)
        out = in_context(step_fn("infer", model, head, data, labels), lev)()
        res["rel_l2_vs_baseline"] = 0.0 if ref is None else rel_l2(out, ref)
        if fp32 is not None: res["rel_l2_vs_fp32"] = rel_l2(out.cpu(), fp32)
    except Exception as e:  # a broken lever must not stop the others
        res["error"] = f"{type(e).__name__}: {e}"[:500]
        traceback.print_exc()
        out = None
    res["seconds"] = time.perf_counter() - t0
    print(f"[{time.strftime('%H:%M:%S')}] {name}: " + (res.get("error") or " ".join(
        f"{t} {res[t]['median_ms']:.1f} ms (host {res[t]['host_ms']:.1f})" for t in TASKS)), file=sys.stderr, flush=True)
    return res, out


def median_rows(rounds) -> list:
    "One row per variant: medians over the rounds of each timing (and the first round's other fields)"
    import statistics
    out = []
    for name in dict.fromkeys(r["variant"] for rs in rounds for r in rs):
        runs = [r for rs in rounds for r in rs if r["variant"] == name]
        good = [r for r in runs if "ft" in r]
        if not good: out.append(runs[0]); continue
        row = dict(good[0], rounds=len(good))
        for t in TASKS:
            row[t] = dict(median_ms=statistics.median(r[t]["median_ms"] for r in good),
                          host_ms=statistics.median(r[t]["host_ms"] for r in good),
                          round_medians=[r[t]["median_ms"] for r in good])
        if "ft_peak_gib" in row: row["ft_peak_gib"] = max(r["ft_peak_gib"] for r in good)
        out.append(row)
    return out


def table(rows, args, env) -> str:
    mem = args.device.startswith("cuda")
    lines = [f"{env['device']}, torch {env['torch']}, {env['points']:,} points ({env['copies']} x {env['scan_points']:,}), "
             f"autocast {env['amp']}, median of {args.repeats} after {args.warmup} warm-ups, median over "
             f"{args.rounds} round(s) of all variants (host = time to launch, before the final synchronize)", "",
             "| variant | inference ms (host) | `lin` step ms (host) | `ft` step ms (host) | `ft` peak GiB | "
             "`ft` kept for backward GiB | rel. L2 to baseline (infer) | rel. L2 to float32 (infer) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['variant']} | {r.get('error') or r['skipped']} | | | | | | |"); continue
        cell = lambda t: f"{r[t]['median_ms']:.1f} ({r[t]['host_ms']:.1f})"
        saved = f"{r['ft_memory']['saved_gib']:.2f}" if "ft_memory" in r else "n/a"
        to32 = f"{r['rel_l2_vs_fp32']:.2e}" if "rel_l2_vs_fp32" in r else "n/a"
        lines.append(f"| {r['variant']} | {cell('infer')} | {cell('lin')} | {cell('ft')} | "
                     f"{r['ft_peak_gib']:.2f} | {saved} | {r['rel_l2_vs_baseline']:.2e} | {to32} |" if mem else
                     f"| {r['variant']} | {cell('infer')} | {cell('lin')} | {cell('ft')} | n/a | n/a | "
                     f"{r['rel_l2_vs_baseline']:.2e} | {to32} |")
    if rows and "baseline_rel_l2_vs_fp32" in rows[0]:
        lines += ["", f"Scale: the baseline's own {env['amp']} inference output is {rows[0]['baseline_rel_l2_vs_fp32']:.2e} "
                      "(relative L2) from float32."]
    return "\n".join(lines)


VARIANTS = dict(  # name -> levers (everything else at the baseline)
    fused_ln=dict(fused_ln=True), fused_ln_half=dict(fused_ln=True, half_ln=True), half_ln=dict(half_ln=True),
    mlp_recompute=dict(mlp_recompute=True), fused_ln_recompute=dict(fused_ln=True, mlp_recompute=True),
    fused_ln_half_recompute=dict(fused_ln=True, half_ln=True, mlp_recompute=True),
    spconv_native=dict(spconv="native"), spconv_split=dict(spconv="mask_split_implicit_gemm"),
    sdpa_flash=dict(sdpa="flash"), sdpa_efficient=dict(sdpa="efficient"),
    compile_mlp=dict(compile=True), no_graphs=dict(graphs=False), no_graphs_fused_ln_half=dict(graphs=False, fused_ln=True, half_ln=True),
    graphs_stage3=dict(min_replays=3), graphs_stage3_fused_ln_half=dict(min_replays=3, fused_ln=True, half_ln=True),
    spconv_sort=dict(torch_sort=False), spconv_sort_no_graphs=dict(torch_sort=False, graphs=False),
    frozen_half=dict(half_ln="frozen"), block0_eager=dict(whole=False), frozen_half_block0=dict(half_ln="frozen", whole=False),
    fp32_ln=dict(half_ln=False), no_mlp_recompute=dict(mlp_recompute=False), fp32_ln_block0=dict(half_ln=False, whole=False), fp32_ln_no_graphs=dict(half_ln=False, graphs=False),
    sdpa_attention=dict(attention="sdpa"), sdpa_attention_flash=dict(attention="sdpa", sdpa="flash"),
    torch_ln=dict(fused_ln=False), torch_bias_grad=dict(bias_kernel=False), bias_kernel=dict(bias_kernel=True), torch_ln_bias_grad=dict(fused_ln=False, bias_kernel=False),
    triton_launch=dict(fast_launch=False), triton_launch_torch_ln_bias_grad=dict(fast_launch=False, fused_ln=False, bias_kernel=False),
    one_pass_bwd=dict(one_pass=True), torch_residual=dict(fused_residual=False), gather_conv=dict(conv="gather"), triton_conv=dict(conv="triton"),
    spconv_conv=dict(conv="spconv"))
DEFAULT_VARIANTS = "fp32_ln,no_mlp_recompute,no_graphs,torch_ln,bias_kernel,triton_launch,sdpa_attention"  # against the library's defaults


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    batch_arguments(p)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="repeat all variants this many times (interleaved); medians")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--profile-steps", type=int, default=2, help="0: no profiles")
    p.add_argument("--profile-variant", default="fused_ln_half", help="the variant profiled beside the baseline")
    p.add_argument("--host-task", default="infer", choices=TASKS, help="the task of the Python (cProfile) host profiles")
    p.add_argument("--budget", type=float, default=330, help="seconds after which remaining variants are skipped")
    p.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).resolve().parent / "out"))
    p.add_argument("--attention-config", default=None, help="JSON with `best_config` (bench/attention_kernel.py --sweep): "
                   "the Triton attention kernel's block sizes")
    args = p.parse_args(argv)
    if args.attention_config:
        from sonata_nb import attention_kernel
        attention_kernel.CONFIG.update({k: tuple(v) for k, v in json.loads(Path(args.attention_config).read_text())["best_config"].items()})
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown: p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
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
    report = dict(env=env, rounds=[], variants=[], profiles={}, host_profile={})
    def save(): (out_dir / "gpu_all.json").write_text(json.dumps(report, indent=1))

    apply(model, {})
    with torch.no_grad():  # the baseline's own float32 distance, for scale
        fp32 = upcast(model.eval()(data)).float().cpu()  # kept on the host: not part of any variant's GPU memory
    for rnd in range(args.rounds):
        rows = []
        report["rounds"].append(rows)
        base, ref = run_variant("baseline", {}, model, head, data, labels, args, None, fp32)
        if rnd == 0:
            ref_out = ref
            if ref is not None: base["baseline_rel_l2_vs_fp32"] = rel_l2(ref.cpu(), fp32)
        rows.append(base); save()
        if rnd == 0 and args.profile_steps:
            report["host_profile"][f"baseline_{args.host_task}"] = host_profile(step_fn(args.host_task, model, head, data, labels))
            report["profiles"]["baseline"] = {t: profile_fn(step_fn(t, model, head, data, labels), args.device,
                                                            args.profile_steps) for t in TASKS}
            save()
        for name in names:
            if time.perf_counter() - start > args.budget: rows.append(dict(variant=name, skipped="time budget")); continue
            r, _ = run_variant(name, VARIANTS[name], model, head, data, labels, args, ref_out, fp32)
            rows.append(r); save()
            if rnd == 0 and args.profile_steps and name == args.profile_variant and "error" not in r:
                apply(model, VARIANTS[name])
                report["profiles"][name] = {t: profile_fn(step_fn(t, model, head, data, labels), args.device,
                                                          args.profile_steps) for t in TASKS}
                report["host_profile"][f"{name}_{args.host_task}"] = host_profile(step_fn(args.host_task, model, head, data, labels))
                apply(model, {}); save()
        report["variants"] = median_rows(report["rounds"]); save()
        print(table(report["variants"], args, env), flush=True)
    apply(model, {})
    report["seconds"] = time.perf_counter() - start
    save()
    for key, prof in report["profiles"].items():  # shortened here; gpu_all.json holds the top 15 per task
        print(f"\n### Profile: {key}\n")
        print("\n\n".join(profile_table(t, {**r, "top": r["top"][:8]}) for t, r in prof.items()))
    for key, rows in report["host_profile"].items():
        print(f"\n### Host (Python) profile: {key}, top functions by own time, ms per call\n")
        for r in rows[:15]: print(f"{r['own_ms']:8.2f} own {r['cum_ms']:8.2f} cum {r['calls']:6d}x {r['fn']}")
    print(f"\n{report['seconds']:.0f} s in all; {out_dir / 'gpu_all.json'}\n")
    print(table(report["variants"], args, env))  # last, so that it survives a truncated log
    return report


if __name__ == "__main__":
    main()
