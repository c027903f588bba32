"""Usage: python bench/probes/ftprobe.py SCAN_DIR. ft step host split (forward / backward), GC effect, launches per step, host speed calibration."""
import gc, json, statistics, sys, time, os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch, torch.nn.functional as F
from steps import build, step_fn, set_trainable
from sonata_nb.model import upcast
model, head, data, labels = build("cuda", scan=sys.argv[1])
model.train(); set_trainable(model, True)
trained = [p for m in (model, head) for p in m.parameters() if p.requires_grad]
def step(rec):
    t0 = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.float16):
        loss = F.cross_entropy(head(upcast(model(data))).float(), labels)
    t1 = time.perf_counter(); loss.backward(); t2 = time.perf_counter()
    for p in trained: p.grad = None
    torch.cuda.synchronize(); t3 = time.perf_counter()
    rec.append(((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t0) * 1e3))
gcs = []
def cb(phase, info, t=[0]):
    if phase == "start": t[0] = time.perf_counter()
    else: gcs.append((info["generation"], (time.perf_counter() - t[0]) * 1e3))
for _ in range(4): step([])
res = {}
x = torch.zeros(16, device="cuda")
def calib():
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(2000): x.add_(1)
    return (time.perf_counter() - t) / 2000 * 1e6
res["add_us"] = calib()
gc.callbacks.append(cb)
for name in ["gc_on", "gc_off"] * 3:
    if name == "gc_off": gc.disable()
    rec = []; gcs.clear()
    for _ in range(8): step(rec)
    gc.enable()
    r = res.setdefault(name, dict(fwd=[], bwd=[], wall=[], gc=[]))
    for f, b, w in rec: r["fwd"].append(f); r["bwd"].append(b); r["wall"].append(w)
    r["gc"].append([(g, round(ms, 2)) for g, ms in gcs])
gc.callbacks.remove(cb)
for name in ("gc_on", "gc_off"):
    r = res[name]
    print(name, "fwd host %.1f  bwd host %.1f  wall %.1f" % tuple(statistics.median(r[k]) for k in ("fwd", "bwd", "wall")), "gc events", sum(len(g) for g in r["gc"]), "gc ms", round(sum(ms for g in r["gc"] for _, ms in g), 1))
print("add_ us", round(res["add_us"], 2), "tracked objects", len(gc.get_objects()))
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof: step([])
ev = prof.key_averages()
launch = {e.key: e.count for e in ev if "aunch" in e.key and e.device_type.name == "CPU"}
print("launch events", launch)
res["launch"] = launch
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "ftprobe.json"), "w"))
