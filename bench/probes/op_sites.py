"""Where a step's memory-bound aten ops come from: device time of aten::copy_, sum, add(_), mul and index ops grouped by
their Python call site (the innermost sonata_nb frames), one profiled step. Usage: python bench/probes/op_sites.py SCAN_DIR [TASK]
On the CPU (no CUDA) it reports self CPU time instead, for a check of the script (`--tiny` batch)."""
import sys, json, os, collections
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch
from torch.profiler import ProfilerActivity, profile
from steps import attention_tune_config, build, portable_command, step_fn
attention_config = attention_tune_config()  # ATTN_TUNE=json (env)
OPS = ("aten::copy_", "aten::sum", "aten::add_", "aten::add", "aten::mul", "aten::index", "aten::index_put_", "aten::fill_")
cuda = torch.cuda.is_available()
scan = sys.argv[1]
task = sys.argv[2] if len(sys.argv) > 2 else "ft"
model, head, data, labels = build("cuda" if cuda else "cpu", tiny=not cuda, scan=scan, crop=None if cuda else 3000)
fn = step_fn(task, model, head, data, labels)
for _ in range(2): fn()
if cuda: torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda, with_stack=True, record_shapes=True) as prof:
    fn()
    if cuda: torch.cuda.synchronize()
def cost(e):
    if not cuda: return e.self_cpu_time_total
    us = getattr(e, "self_device_time_total", None)
    return e.self_cuda_time_total if us is None else us
sites = collections.defaultdict(lambda: [0, 0.0])
for e in prof.events():
    if e.name not in OPS: continue
    frames, q = [], e.cpu_parent  # the Python frames (profiler's Python tracer) and autograd nodes above the op
    while q is not None and len(frames) < 3:
        if "sonata_nb/" in q.name or q.name.startswith("autograd::engine::evaluate_function"):
            frames.append(q.name.replace("autograd::engine::evaluate_function: ", "bwd "))
        q = q.cpu_parent
    shapes = str((e.input_shapes or [])[:2])  # record_shapes: the first two inputs' shapes
    key = (e.name, shapes, " < ".join(f.split("sonata_nb/")[-1] for f in frames) or "(no python frame)")
    sites[key][0] += 1; sites[key][1] += cost(e) / 1e3
rows = sorted(([n, t, s, c, round(ms, 3)] for (n, t, s), (c, ms) in sites.items()), key=lambda r: -r[4])
print(task, "ms by op and call site (%s)" % ("device" if cuda else "self CPU"), "total", round(sum(r[4] for r in rows), 2))
for r in rows[:50]: print("%7.3f %4d %-14s %-30s %s" % (r[4], r[3], r[0], r[1][:30], r[2][:150]))
out = dict(card=torch.cuda.get_device_name() if cuda else "cpu", command=portable_command(["python3", "bench/probes/op_sites.py", *sys.argv[1:]]),
           rows=[dict(op=r[0], shapes=r[1], site=r[2], calls=r[3], ms=r[4]) for r in rows])
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "op_sites_%s.json" % task), "w"), indent=0)
