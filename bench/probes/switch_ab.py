"""A/B of a module-wide speed switch on the issue's batch with a HostPlan: interleaved pairs (order alternating),
per task a synchronized step (latency, host) and 4 steps queued back to back (chained, per step).
Usage: python bench/probes/switch_ab.py SCAN_DIR SWITCH [PAIRS] [TASKS]   
SWITCH: gather | triton_conv (conv backend against spconv) | residual | bias_kernel (bias gradients by kernels.column_sum)
        | one_pass (the attention's one-pass backward) | stream (the LayerNorms meeting the residual stream in their kernels)
        | gelu (the MLP's GELU recompute, backward and fc1 bias sum in one kernel)
        | fused_bias (qkv's, proj's, fc2's and the CPE Linear's bias gradients summed by the kernels consuming their outputs)
        | conv_bias (the convolutions' bias added in the forward kernel's epilogue)
        | conv_stream (the CPE convolution adds the stream's other gradient to its input gradient in its backward)
        | upcast_kernels (the up-cast by kernels.gather_rows and kernels.cell_sum)
        | block_casts (a block's weight casts and their gradients' casts back in one multi-tensor copy each way)
CONV_TUNE=conv_tune.json (env): the Triton kernels' block sizes from bench/conv_tune.py's best, not CONV_CONFIG's defaults;
ATTN_TUNE=attention_kernel.json (env): the attention kernels' from bench/attention_kernel.py --sweep's best_config."""
import sys, json, os, statistics, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch
from steps import attention_tune_config, build, conv_tune_config, portable_command, step_fn, sync
import sonata_nb.model as M
from sonata_nb.model import HostPlan, pooling_strides
from sonata_nb.runtime import to_device
from scan import issue_batch
import sonata_nb.kernels as K, sonata_nb.attention_kernel as A, sonata_nb.sparse_conv as S
def conv_backend(name): return lambda on: M.set_conv_backend(name if on else "spconv")
SWITCHES = dict(gather=conv_backend("gather"), triton_conv=conv_backend("triton"), residual=M.set_fused_residual,
                bias_kernel=K.set_bias_grad_kernel, one_pass=A.set_one_pass_backward, stream=M.set_fused_stream,
                gelu=K.set_fused_gelu, fused_bias=K.set_fused_bias_grad, conv_bias=S.set_bias_in_kernel,
                conv_stream=M.set_conv_stream, upcast_kernels=M.set_upcast_kernels,
                block_casts=K.set_block_casts)
scan, name = sys.argv[1], sys.argv[2]
pairs = int(sys.argv[3]) if len(sys.argv) > 3 else 10
tasks = (sys.argv[4] if len(sys.argv) > 4 else "ft,infer").split(",")
switch = SWITCHES[name]
conv_config = conv_tune_config()
attention_config = attention_tune_config()
default = dict(residual=M._fused_residual, bias_kernel=K._bias_grad_kernel, one_pass=A._one_pass, stream=M._fused_stream,
               gelu=K._fused_gelu, fused_bias=K._fused_bias_grad, conv_bias=S._bias_in_kernel,
               conv_stream=M._conv_stream, upcast_kernels=M._upcast_kernels,
               block_casts=K._block_casts).get(name, M._conv_backend)
model, head, _, labels = build("cuda", scan=scan)
cpu = issue_batch(scan)
data = to_device({**cpu, "_host_plan": HostPlan(cpu, pooling_strides(model))}, torch.device("cuda"))
out = dict(switch=name, card=torch.cuda.get_device_name(), pairs=pairs, command=portable_command(["python3", "bench/probes/switch_ab.py", *sys.argv[1:]]),
           conv_config=conv_config, attention_config=attention_config)
for task in tasks:
    fn = step_fn(task, model, head, data, labels)
    for on in (True, False, True, False): switch(on); fn()
    sync("cuda")
    res = {on: dict(chained=[], lat=[], host=[]) for on in (True, False)}
    ratios = []
    for i in range(pairs):
        pair = {}
        for on in ((True, False) if i % 2 == 0 else (False, True)):
            switch(on)
            t = time.perf_counter(); fn(); h = time.perf_counter(); sync("cuda"); e = time.perf_counter()
            res[on]["lat"].append((e - t) * 1e3); res[on]["host"].append((h - t) * 1e3)
            t = time.perf_counter()
            for _ in range(4): fn()
            sync("cuda"); c = (time.perf_counter() - t) * 1e3 / 4
            res[on]["chained"].append(c); pair[on] = c
        ratios.append(pair[False] / pair[True])
    out[task] = {("on" if on else "off"): {k: round(statistics.median(v), 2) for k, v in r.items()} for on, r in res.items()}
    out[task]["off_over_on_chained"] = round(statistics.median(ratios), 3)
    for on in (True, False):  # the step's peak memory (model, head and batch resident)
        switch(on); sync("cuda"); torch.cuda.reset_peak_memory_stats(); fn(); sync("cuda")
        out[task]["on" if on else "off"]["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    print(task, json.dumps(out[task]), flush=True)
(M.set_conv_backend if isinstance(default, str) else switch)(default)  # back to the library's default
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), f"switch_ab_{name}.json"), "w"), indent=1)
