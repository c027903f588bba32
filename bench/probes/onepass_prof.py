"""Kernel time of the `ft` step with the two-kernel and the one-pass attention backward (torch.profiler). Usage: python bench/probes/onepass_prof.py SCAN_DIR"""
import sys, json, os
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import torch
from steps import build, step_fn, profile_fn
import sonata_nb.attention_kernel as AK
model, head, data, labels = build("cuda", scan=sys.argv[1])
res = {}
for rnd in range(1):
    for one in (False, True):
        AK.set_one_pass_backward(one)
        p = profile_fn(step_fn("ft", model, head, data, labels), "cuda", steps=2, top=12)
        res.setdefault(str(one), []).append(p)
        att = {r["name"]: round(r["total_ms"], 2) for r in p["top"] if r["name"].startswith("_pa")}
        print("one_pass" if one else "two_pass", "busy_ms %.1f" % p["busy_ms"], att, flush=True)
json.dump(res, open(os.path.join(os.environ["OUT"], "onepass_prof.json"), "w"))
