"""A/B of the fused residual switch (`set_fused_residual`) on the `ft` step with a HostPlan: interleaved pairs, latency and 4 chained steps. Usage: python bench/probes/resid_ab.py SCAN_DIR [PAIRS]"""
import sys, json, os, statistics, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch
from steps import build, step_fn, sync
from scan import issue_batch
import sonata_nb.model as M
from sonata_nb.model import HostPlan, pooling_strides
from sonata_nb.runtime import to_device
model, head, _, labels = build("cuda", scan=sys.argv[1])
cpu = issue_batch(sys.argv[1])
data = to_device({**cpu, "_host_plan": HostPlan(cpu, pooling_strides(model))}, torch.device("cuda"))
fn = step_fn("ft", model, head, data, labels)
for on in (True, False, True, False): M.set_fused_residual(on); fn()
sync("cuda")
res = {True: dict(chained=[], lat=[], host=[]), False: dict(chained=[], lat=[], host=[])}
ratios = []
for i in range(int(sys.argv[2]) if len(sys.argv) > 2 else 30):
    pair = {}
    for on in ((True, False) if i % 2 == 0 else (False, True)):
        M.set_fused_residual(on)
        t = time.perf_counter(); fn(); h = time.perf_counter(); sync("cuda"); e = time.perf_counter()
        res[on]["lat"].append((e - t) * 1e3); res[on]["host"].append((h - t) * 1e3)
        lat = (e - t) * 1e3
        t = time.perf_counter()
        for _ in range(4): fn()
        sync("cuda"); c = (time.perf_counter() - t) * 1e3 / 4
        res[on]["chained"].append(c); pair[on] = (c, lat)
    ratios.append(pair[False][0] / pair[True][0])
out = {("fused" if on else "torch"): {k: statistics.median(v) for k, v in r.items()} for on, r in res.items()}
out["torch_over_fused_chained_median"] = statistics.median(ratios)
print(json.dumps(out))
json.dump(dict(summary=out, all={str(k): v for k, v in res.items()}, ratios=ratios), open(os.path.join(os.environ.get("OUT", "/tmp"), "resid_ab.json"), "w"))
