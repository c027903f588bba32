"""cProfile of the `ft` step's host side on the issue batch (own / cumulative ms per step). Usage: python bench/probes/hostprof.py SCAN_DIR"""
import sys, json, os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch
from steps import build, step_fn, host_profile
model, head, data, labels = build("cuda", scan=sys.argv[1])
fn = step_fn("ft", model, head, data, labels)
for _ in range(3): fn()
torch.cuda.synchronize()
rows = host_profile(fn, steps=3, top=45)
for r in rows: print("%7.2f %7.2f %5d %s" % (r["own_ms"], r["cum_ms"], r["calls"], r["fn"][:100]))
json.dump(rows, open(os.path.join(os.environ.get("OUT", "/tmp"), "hostprof_ft.json"), "w"))
