"""spconv sorts each new kernel map's masks with thrust, which synchronises; `SPCONV_DO_SORT=0` (read by spconv at
import) skips that sort. Run once with and once without, in two processes; each run times the issue's three tasks and
saves its inference output, and the second compares its output (and ft gradients) with the first's, bit for bit.

    PYTHONPATH=. python bench/spconv_sort.py --save /tmp/sort1.pt
    SPCONV_DO_SORT=0 PYTHONPATH=. python bench/spconv_sort.py --save /tmp/sort0.pt --compare /tmp/sort1.pt
"""
import argparse, json, os, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import DEFAULT_SCAN, TASKS, build, step_fn, time_fn, amp_dtype
from sonata_nb.model import upcast


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scan", default=str(DEFAULT_SCAN))
    p.add_argument("--save", required=True)
    p.add_argument("--compare")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    model, head, data, labels = build("cuda", False, args.scan)
    out = step_fn("infer", model, head, data, labels)()
    model.train(); model.requires_grad_(True)  # one ft backward, shuffle off for a comparable pass
    model.shuffle_orders = False
    for m in model.modules():
        if hasattr(m, "shuffle_orders"): m.shuffle_orders = False
    torch.manual_seed(0)
    with torch.autocast("cuda", dtype=amp_dtype("cuda")):
        loss = F.cross_entropy(head(upcast(model(data))).float(), labels)
    loss.backward()
    grads = {k: v.grad.detach().clone() for k, v in model.named_parameters() if v.grad is not None}
    model.zero_grad(set_to_none=True); head.zero_grad(set_to_none=True)
    res = dict(device=torch.cuda.get_device_name(), do_sort=os.environ.get("SPCONV_DO_SORT", "1"),
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), tasks={})
    torch.save(dict(out=out.cpu(), grads={k: g.cpu() for k, g in grads.items()}), args.save)
    if args.compare:
        ref = torch.load(args.compare)
        res["infer_equal"] = bool(torch.equal(ref["out"], out.cpu()))
        res["grads_equal"] = all(torch.equal(ref["grads"][k], g.cpu()) for k, g in grads.items())
        res["grads_max_rel"] = max(((ref["grads"][k].float() - g.cpu().float()).norm() /
                                    ref["grads"][k].float().norm().clamp(min=1e-30)).item() for k, g in grads.items())
    for task in TASKS:
        r = time_fn(step_fn(task, model, head, data, labels), "cuda", args.repeats, 3)
        res["tasks"][task] = dict(median_ms=r["median_ms"], host_ms=r["host_ms"])
    print(json.dumps({k: v for k, v in res.items()}), flush=True)
    if args.json: Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
