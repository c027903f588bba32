"""A/B timing of two sonata_nb trees in one process: the issue's three tasks, calls interleaved so that host noise
(another tenant, clocks) hits both sides alike.

    git archive <commit> sonata_nb | tar -x -C /tmp/b          # the other tree (any sonata_nb/ folder)
    PYTHONPATH=. python bench/ab.py --b /tmp/b --b-name <commit> --json bench/results/ab_h100.json

A = the importable sonata_nb (this checkout), B = `--b DIR/sonata_nb` imported as package `sonata_b` without running
its `__init__`. Both encoders get A's random weights. Per task (bench/steps.py), `--repeats` pairs of synchronized
calls after `--warmup`, the order inside a pair alternating; medians, minima and the median of the per-pair ratio B/A.
The bitwise equality of both inference outputs is reported too (they compute the same function).
`--plan --chain 8`: the batch carries a `HostPlan` and each timed call queues 8 steps back to back (per-step times):
the steps of a loop that reads nothing from the GPU between them (`bench/host_plan.py`).
"""
import argparse, importlib, json, statistics, sys, time, types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import DEFAULT_SCAN, TASKS, build, step_fn, sync
from sonata_nb.model import SONATA_CONFIG


def import_tree(root:Path, name:str="sonata_b"):
    "The package at `root/sonata_nb` as `name` (relative imports resolve inside it; its __init__ is not run)"
    pkg = root / "sonata_nb"
    if not (pkg / "model.py").exists(): raise SystemExit(f"--b {root}: no sonata_nb/model.py there")
    mod = types.ModuleType(name); mod.__path__ = [str(pkg)]
    sys.modules[name] = mod
    return importlib.import_module(f"{name}.model")


def timed(fn, device) -> tuple:
    "(wall ms, host ms) of one synchronized call"
    t = time.perf_counter(); fn(); h = time.perf_counter(); sync(device); e = time.perf_counter()
    return (e - t) * 1000, (h - t) * 1000


def chained(fn, n:int):
    "`fn` called `n` times in a row; `timed` of it, divided by `n`, is a step's time in a loop without reads"
    if n == 1: return fn
    def run():
        for _ in range(n): fn()
    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--b", required=True, help="folder holding the other tree's sonata_nb/")
    p.add_argument("--b-name", help="what B is, for the record (e.g. its commit); default: the folder's name")
    p.add_argument("--scan", default=str(DEFAULT_SCAN))
    p.add_argument("--device", default="cuda")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--chain", type=int, default=1, help="steps queued back to back per timed call (then one synchronize); "
                   "times are per step. With --plan, steps overlap as in a loop that reads nothing between them")
    p.add_argument("--plan", action="store_true", help="the batch carries a HostPlan, as the trainer's batches do (a tree "
                   "without HostPlan ignores it and reads the GPU)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    model_a, head, data, labels = build(args.device, args.tiny, args.scan)
    if args.plan:
        from sonata_nb.model import HostPlan, pooling_strides
        from sonata_nb.runtime import to_device
        cpu = {k: v.cpu() for k, v in data.items()}  # the plan is made where the batch is on the CPU, as in a loader worker
        data = to_device({**cpu, "_host_plan": HostPlan(cpu, pooling_strides(model_a))}, torch.device(args.device))
    mb = import_tree(Path(args.b))
    model_b = mb.PointTransformerV3(**model_a.config).to(args.device)
    model_b.load_state_dict(model_a.state_dict())
    res = dict(device=torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu", torch=torch.__version__,
               points=len(data["coord"]), b=args.b_name or Path(args.b).name, repeats=args.repeats, chain=args.chain,
               plan=args.plan,
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), tasks={})
    ya, yb = step_fn("infer", model_a, head, data, labels)(), step_fn("infer", model_b, head, data, labels)()
    res["infer_outputs_equal"] = bool(torch.equal(ya, yb))
    res["infer_max_abs_diff"] = (ya.float() - yb.float()).abs().max().item()
    print(f"{res['device']}: {res['points']:,} points; inference outputs A == B bitwise: {res['infer_outputs_equal']} "
          f"(max |A-B| {res['infer_max_abs_diff']:.2e})\n\n| task | A median ms (host) | B median ms (host) | A min | B min | "
          "B/A, median of pairs |\n|---|---|---|---|---|---|")
    for task in TASKS:
        fa, fb = (chained(step_fn(task, m, head, data, labels), args.chain) for m in (model_a, model_b))
        for _ in range(args.warmup): fa(); fb()
        a, b = [], []
        for i in range(args.repeats):
            pair = [(a, fa), (b, fb)] if i % 2 == 0 else [(b, fb), (a, fa)]
            for out, f in pair: out.append(tuple(t / args.chain for t in timed(f, args.device)))
        med = lambda xs, k: statistics.median(x[k] for x in xs)
        r = res["tasks"][task] = dict(
            a_ms=med(a, 0), a_host_ms=med(a, 1), b_ms=med(b, 0), b_host_ms=med(b, 1), a_min_ms=min(x[0] for x in a),
            b_min_ms=min(x[0] for x in b), ratio_b_over_a=statistics.median(y[0] / x[0] for x, y in zip(a, b)),
            a_all=[x[0] for x in a], b_all=[x[0] for x in b])
        print(f"| {task} | {r['a_ms']:.1f} ({r['a_host_ms']:.1f}) | {r['b_ms']:.1f} ({r['b_host_ms']:.1f}) | "
              f"{r['a_min_ms']:.1f} | {r['b_min_ms']:.1f} | {r['ratio_b_over_a']:.3f} |", flush=True)
    if args.json: Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
