"""The patch attention of the issue's batch, stage by stage: the Triton kernel (attention backend "triton",
`sonata_nb.attention_kernel`) against the SDPA path (backend "sdpa": gathered q/k/v, torch's attention, scatter back),
forward (no grad) and forward + backward, and, with `--sweep`, the kernel's block sizes, warps and stages;
`--one-pass` adds the kernel with its one-pass backward (`set_one_pass_backward`: dq added atomically).

    PYTHONPATH=. python bench/attention_kernel.py --json bench/results/attention_kernel_h100.json --sweep

Each stage's first block's attention is run on that block's real input (the issue's batch, 3 x scene0000_00, its real
serialization orders and patch layout, fp16 autocast, random weights): `attend` = qkv Linear + attention + proj Linear
(the Linears are the same in both). CUDA events, median of `--repeats` after 5 warm-ups. "per step" multiplies each
stage by its number of blocks (Sonata: 3, 3, 3, 12, 3). `--sweep` times each kernel's configurations (the other two at
their current best) and keeps the fastest by the per-step sum (`--kernel-time`: by the kernel's own device time per
step, from the profiler, which the host's launch speed does not move); the JSON's `best_config` can be given to
`bench/gpu_all.py --attention-config`.
"""
import argparse, json, statistics, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import batch_arguments, build, portable_command
from sonata_nb import attention as A
from sonata_nb import attention_kernel as AK

FWD = [(64, 64, 4, 2), (128, 64, 4, 2), (64, 64, 4, 3), (64, 32, 4, 2), (128, 128, 8, 2), (64, 128, 4, 2), (32, 64, 2, 2),
       (128, 64, 8, 2), (128, 32, 4, 2), (64, 64, 2, 2), (32, 32, 2, 2), (64, 32, 2, 2)]
BWD = [(64, 64, 4, 2), (32, 64, 4, 2), (32, 128, 4, 2), (32, 128, 4, 3), (16, 128, 4, 2), (32, 128, 8, 2), (64, 64, 4, 3),
       (32, 64, 2, 2), (64, 128, 8, 2), (16, 64, 2, 2), (32, 32, 2, 2), (64, 32, 2, 2), (64, 64, 2, 2), (16, 128, 2, 2),
       (32, 64, 4, 3)]


def stage_inputs(model, data, device="cuda"):
    "(attention module, Point, its features, blocks) of each encoder stage's first block, from one forward"
    seen, orig = {}, A.SerializedAttention.maps
    def record(self, point):
        key = id(point)
        if key not in seen: seen[key] = [self, point, point.feat.detach().clone(), 0]
        seen[key][3] += 1  # one call per block (graphed stages ask every block's maps first)
        return orig(self, point)
    A.SerializedAttention.maps = record
    try:
        with torch.no_grad(), torch.autocast(device, dtype=torch.float16 if device == "cuda" else torch.bfloat16):
            model.eval()(data)
    finally: A.SerializedAttention.maps = orig
    return [tuple(v) for v in seen.values()]


def time_ms(fn, repeats:int) -> float:
    for _ in range(5): fn()
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for a, b in ev: a.record(); fn(); b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev)


def stage_fns(attn, point, feat, backend, index_dtype=None): # index_dtype: the triton maps' patch rows in it (None: as made)
    "(forward without grad, forward + backward) callables of `attend` under `backend`"
    A.set_attention_backend(backend)
    with torch.autocast("cuda", dtype=torch.float16): maps = attn.maps(point)
    assert maps.backend == backend, maps.backend
    if index_dtype is not None:
        full, full_len, dup_base, dup_rows, short, short_len = maps.tensors
        maps = maps._replace(tensors=(full.to(index_dtype), full_len, dup_base, dup_rows, short.to(index_dtype), short_len))
    x = feat.clone().requires_grad_()
    g = torch.randn(feat.shape, device=feat.device, dtype=torch.float16, generator=torch.Generator("cuda").manual_seed(0))
    def fwd():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16): return attn.attend(feat, maps)
    def fwd_bwd():
        with torch.autocast("cuda", dtype=torch.float16): out = attn.attend(x, maps)
        out.backward(g); x.grad = None
    return fwd, fwd_bwd


def measure(stages, backend, repeats) -> dict:
    rows = []
    for attn, point, feat, depth in stages:
        fwd, fwd_bwd = stage_fns(attn, point, feat, backend)
        rows.append(dict(points=len(feat), channels=attn.channels, heads=attn.num_heads, blocks=depth,
                         fwd_ms=time_ms(fwd, repeats), fwd_bwd_ms=time_ms(fwd_bwd, repeats)))
    return dict(stages=rows, fwd_step_ms=sum(r["fwd_ms"] * r["blocks"] for r in rows),
                fwd_bwd_step_ms=sum(r["fwd_bwd_ms"] * r["blocks"] for r in rows))


def kernel_step_ms(stages, name:str, repeats:int, index_dtype=None) -> float:
    "Device time of the attention kernel `_pa_<name>` per `ft` step (profiler): each stage's forward + backward, times its blocks"
    from torch.profiler import profile, ProfilerActivity
    kernel, total = "_pa_" + ("dkdv" if name == "bwd" else name), 0.0
    for attn, point, feat, depth in stages:
        _, fwd_bwd = stage_fns(attn, point, feat, "triton", index_dtype)
        for _ in range(3): fwd_bwd()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(repeats): fwd_bwd()
            torch.cuda.synchronize()
        us = [e.self_cuda_time_total if getattr(e, "self_device_time_total", None) is None else e.self_device_time_total
              for e in prof.key_averages() if e.key == kernel]
        assert us, f"no {kernel} launch profiled"
        total += sum(us) / 1e3 / repeats * depth
    return total


def sweep(stages, repeats, kernels=("fwd", "dkdv", "dq"), kernel_time:bool=False) -> dict:
    "Per kernel, its configurations timed with the others at their best so far (`kernel_time`: the kernel's own device time); CONFIG left at the best"
    tried = {}
    for name, options, what in (("fwd", FWD, "fwd_step_ms"), ("dkdv", BWD, "fwd_bwd_step_ms"), ("dq", BWD, "fwd_bwd_step_ms"),
                                ("bwd", BWD, "fwd_bwd_step_ms")):
        if name not in kernels: continue
        results = []
        AK.set_one_pass_backward(name == "bwd")
        for cfg in options:
            AK.CONFIG[name] = cfg
            try: ms = kernel_step_ms(stages, name, repeats) if kernel_time else measure(stages, "triton", repeats)[what]
            except Exception as e: ms = None; print(f"{name} {cfg}: {type(e).__name__}: {e}"[:300], file=sys.stderr)
            results.append(dict(config=list(cfg), step_ms=ms))
            print(f"[{time.strftime('%H:%M:%S')}] {name} {cfg}: {ms}", file=sys.stderr, flush=True)
        best = min((r for r in results if r["step_ms"] is not None), key=lambda r: r["step_ms"])
        AK.CONFIG[name] = tuple(best["config"])
        tried[name] = results
    AK.set_one_pass_backward(False)
    return tried


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    batch_arguments(p)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--sweep", action="store_true", help="time the kernel's configurations and keep the fastest")
    p.add_argument("--sweep-kernels", default="fwd,dkdv,dq", help="the kernels --sweep times (bwd: the one-pass backward)")
    p.add_argument("--kernel-time", action="store_true", help="--sweep by each kernel's own device time (profiler), not whole steps' events")
    p.add_argument("--one-pass", action="store_true", help="also time the one-pass backward (dq added atomically), interleaved")
    p.add_argument("--index-ab", action="store_true", help="each kernel's device time with int32 and int64 patch maps, interleaved rounds")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    assert torch.cuda.is_available(), "CUDA only"
    model, _, data, _ = build("cuda", args.tiny, args.scan, args.copies, args.crop)
    stages = stage_inputs(model, data)
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, command=portable_command(sys.argv),
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), default_config={k: list(v) for k, v in AK.CONFIG.items()})
    # the same attention: relative L2 of the kernel's output to the SDPA path's, per stage (fp16 rounding)
    try:
        res["rel_l2_kernel_vs_sdpa"] = []
        for attn, point, feat, _ in stages:
            outs = [stage_fns(attn, point, feat, b)[0]().float() for b in ("sdpa", "triton")]
            res["rel_l2_kernel_vs_sdpa"].append(((outs[1] - outs[0]).norm() / outs[0].norm()).item())
        variants = ["sdpa", "triton"] + ["triton_one_pass"] * args.one_pass
        for rnd in range(2):  # interleaved: sdpa, kernel, (kernel with the one-pass backward, ...) sdpa, kernel, ...
            for variant in variants:
                AK.set_one_pass_backward(variant == "triton_one_pass")
                res.setdefault(variant, []).append(measure(stages, variant.split("_")[0], args.repeats))
            AK.set_one_pass_backward(False)
        if args.index_ab:
            res["index_ab"] = [{f"{name}_{dt}": kernel_step_ms(stages, name, args.repeats, getattr(torch, dt))
                                for dt in ("int32", "int64") for name in ("fwd", "dkdv", "dq")} for _ in range(2)]
            for r in res["index_ab"]: print("index maps, kernel ms per step:", {k: round(v, 3) for k, v in r.items()})
        if args.sweep:
            res["sweep"] = sweep(stages, args.repeats, args.sweep_kernels.split(","), args.kernel_time)
            res["best_config"] = {k: list(v) for k, v in AK.CONFIG.items()}
            res["triton_best"] = measure(stages, "triton", args.repeats)
    finally: A.set_attention_backend("auto")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(f"| stage | points | C / heads | blocks | SDPA fwd | kernel fwd | SDPA fwd+bwd | kernel fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|")
    med = lambda b, i, k: statistics.median(r["stages"][i][k] for r in res[b])
    for i, r in enumerate(res["sdpa"][0]["stages"]):
        print(f"| {i} | {r['points']:,} | {r['channels']} / {r['heads']} | {r['blocks']} | {med('sdpa', i, 'fwd_ms'):.3f} | "
              f"{med('triton', i, 'fwd_ms'):.3f} | {med('sdpa', i, 'fwd_bwd_ms'):.3f} | {med('triton', i, 'fwd_bwd_ms'):.3f} |")
    for b in variants:
        print(b, "per step: fwd", [round(r["fwd_step_ms"], 2) for r in res[b]], "fwd+bwd", [round(r["fwd_bwd_step_ms"], 2) for r in res[b]])
    if args.sweep:
        print("best", res["best_config"], "fwd", round(res["triton_best"]["fwd_step_ms"], 2), "fwd+bwd",
              round(res["triton_best"]["fwd_bwd_step_ms"], 2))
    print("rel L2 kernel vs sdpa", [f"{x:.1e}" for x in res["rel_l2_kernel_vs_sdpa"]])


if __name__ == "__main__":
    main()
