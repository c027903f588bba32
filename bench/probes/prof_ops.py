"""A task's step (default ft): all kernels and the aten ops by their kernels' device time (2 profiled steps). Usage: python bench/probes/prof_ops.py SCAN_DIR [TASK] [VARIANTS]
VARIANTS: comma-separated torch_residual | spconv_conv | gather_conv | triton_conv | bias_kernel | one_pass | stream | no_stream | torch_gelu
          | fused_bias (the Linears' bias gradients summed by the kernels consuming their outputs) | no_fused_bias | conv_bias (the convolutions' bias in the forward kernel)
          | no_conv_bias | conv_stream (the CPE convolution adds the stream's other gradient in its backward) | no_conv_stream
          | upcast_kernels (the up-cast by kernels.gather_rows and kernels.cell_sum) | no_upcast_kernels
          | block_casts (a block's weight casts and their gradients' casts back in one multi-tensor copy each way) | no_block_casts
CONV_TUNE=conv_tune.json (env): the Triton convolution kernels' block sizes from bench/conv_tune.py's best.
ROW_TUNE=row_grid.json (env): the row kernels' blocks by width from bench/probes/row_grid.py's best.
Also prints and writes (`launches`) the kernels' time by name and grid, which tells one stage's launches from another's."""
import sys, json, os, tempfile
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from steps import attention_tune_config, build, conv_tune_config, portable_command, row_tune_config, step_fn
conv_config = conv_tune_config()
row_config = row_tune_config()
attention_config = attention_tune_config()
model, head, data, labels = build("cuda", scan=sys.argv[1])
import sonata_nb.model as M, sonata_nb.kernels as K, sonata_nb.attention_kernel as A, sonata_nb.sparse_conv as S
for variant in (sys.argv[3].split(",") if len(sys.argv) > 3 else []):
    if variant == "torch_residual": M.set_fused_residual(False)
    elif variant in ("spconv_conv", "gather_conv", "triton_conv"): M.set_conv_backend(variant.split("_")[0])
    elif variant == "bias_kernel": K.set_bias_grad_kernel(True)
    elif variant == "one_pass": A.set_one_pass_backward(True)
    elif variant in ("stream", "no_stream"): M.set_fused_stream(variant == "stream")
    elif variant == "torch_gelu": K.set_fused_gelu(False)
    elif variant in ("fused_bias", "no_fused_bias"): K.set_fused_bias_grad(variant == "fused_bias")
    elif variant in ("conv_bias", "no_conv_bias"): S.set_bias_in_kernel(variant == "conv_bias")
    elif variant in ("conv_stream", "no_conv_stream"): M.set_conv_stream(variant == "conv_stream")
    elif variant in ("upcast_kernels", "no_upcast_kernels"): M.set_upcast_kernels(variant == "upcast_kernels")
    elif variant in ("block_casts", "no_block_casts"): K.set_block_casts(variant == "block_casts")
    else: raise SystemExit(f"unknown variant {variant!r}")
task = sys.argv[2] if len(sys.argv) > 2 else "ft"
fn = step_fn(task, model, head, data, labels)
for _ in range(3): fn()
torch.cuda.synchronize()
steps = 2
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(steps): fn()
    torch.cuda.synchronize()
ev = prof.key_averages()
def dev(e):
    us = getattr(e, "self_device_time_total", None)
    return e.self_cuda_time_total if us is None else us
kern = sorted([dict(name=e.key[:120], calls=e.count // steps, ms=dev(e) / 1e3 / steps) for e in ev
               if getattr(e, "device_type", None) == DeviceType.CUDA and dev(e) > 0], key=lambda r: -r["ms"])
ops = sorted([dict(name=e.key, calls=e.count // steps, ms=dev(e) / 1e3 / steps, cpu_ms=e.self_cpu_time_total / 1e3 / steps)
              for e in ev if getattr(e, "device_type", None) == DeviceType.CPU and dev(e) > 0], key=lambda r: -r["ms"])
cpu = sorted([dict(name=e.key, calls=e.count // steps, cpu_ms=e.self_cpu_time_total / 1e3 / steps)
              for e in ev if getattr(e, "device_type", None) == DeviceType.CPU], key=lambda r: -r["cpu_ms"])
busy = sum(r["ms"] for r in kern)
# the kernels by name and grid (a grid tells a stage's launch from another's): from the profile's Chrome trace
trace = os.path.join(tempfile.mkdtemp(), "trace.json")
prof.export_chrome_trace(trace)
by_grid = {}
for e in json.load(open(trace))["traceEvents"]:
    if e.get("cat") != "kernel": continue
    key = (e["name"][:120], str(e.get("args", {}).get("grid")))
    n, us = by_grid.get(key, (0, 0.0))
    by_grid[key] = (n + 1, us + e.get("dur", 0.0))
os.remove(trace)
launches = sorted([dict(name=k[0], grid=k[1], calls=n // steps, ms=us / 1e3 / steps) for k, (n, us) in by_grid.items()], key=lambda r: -r["ms"])
print(task, "busy %.1f ms, kernels/step %d" % (busy, sum(r["calls"] for r in kern)))
for r in kern[:60]: print("K %7.2f %5d %s" % (r["ms"], r["calls"], r["name"][:110]))
for r in ops[:45]: print("O %7.2f %5d cpu %6.2f %s" % (r["ms"], r["calls"], r["cpu_ms"], r["name"][:90]))
for r in cpu[:25]: print("C %7.2f %5d %s" % (r["cpu_ms"], r["calls"], r["name"][:90]))
for r in launches[:60]: print("G %7.3f %5d %-16s %s" % (r["ms"], r["calls"], r["grid"], r["name"][:60]))
json.dump(dict(card=torch.cuda.get_device_name(), command=portable_command(["python3", "bench/probes/prof_ops.py", *sys.argv[1:]]), conv_config=conv_config, attention_config=attention_config, row_config=row_config, busy=busy, kernels=kern, ops=ops, cpu=cpu[:200], launches=launches[:300]), open(os.path.join(os.environ.get("OUT", "/tmp"), "prof_ops_%s%s.json" % (task, "_" + sys.argv[3].replace(",", "_") if len(sys.argv) > 3 else "")), "w"))
