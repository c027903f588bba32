"""Steps with and without a `HostPlan` (the batch's sizes and pooling cells made on the CPU, as the trainer's collate
does in its workers): the issue's three tasks, one process, interleaved rounds.

    PYTHONPATH=. python bench/host_plan.py --scan .benchdata/scannet/scene0000_00 --json $OUT/host_plan.json
    PYTHONPATH=. python bench/host_plan.py --device cpu --tiny --crop 3000 --rounds 1 --repeats 2   # CPU check

Per task and variant: `latency` = median of synchronized single steps (what bench/gpu_all.py reports);
`chained` = `--chain` steps queued back to back, then one synchronize, per step (a training loop that does not
read the GPU between steps; without the plan each forward still waits once at its start). `behind_queue` = the
host time of one step queued behind ~`--queue-ms` of GPU work (one spinning kernel): without the plan it includes
the wait for that work, with it the step must return before the queue drains (no hidden synchronisation). Also: the
plan's CPU cost on the batch, and whether both variants give the same inference output (bitwise).
`--torch-residual` adds a third variant: the plan, with the training blocks' DropPath branches added by torch's
operations (`set_fused_residual(False)`) instead of `kernels.residual_drop_path`.
"""
import argparse, json, statistics, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import DEFAULT_SCAN, TASKS, build, step_fn, sync
from scan import issue_batch
from sonata_nb import model as M
from sonata_nb.model import HostPlan, pooling_strides
from sonata_nb.runtime import to_device


def queue_gpu_work(device, ms:float) -> None:
    "Queue about `ms` of GPU work on `device` as one kernel (`torch.cuda._sleep`), without waiting for it"
    sync(device); t = time.perf_counter()
    torch.cuda._sleep(10**7); sync(device)
    per = (time.perf_counter() - t) * 1000 / 10**7  # ms per cycle, with one launch's overhead
    torch.cuda._sleep(int(ms / per))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--scan", default=DEFAULT_SCAN)
    p.add_argument("--tiny", action="store_true", help="a tiny encoder (CPU check)")
    p.add_argument("--crop", type=int, default=None)
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=8, help="synchronized steps per variant and round")
    p.add_argument("--chain", type=int, default=8, help="steps queued back to back per chained measurement")
    p.add_argument("--queue-ms", type=float, default=300)
    p.add_argument("--torch-residual", action="store_true", help="add the variant planned_torch_residual")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    model, head, plain, labels = build(dev, args.tiny, args.scan, crop=args.crop)
    cpu = issue_batch(args.scan, crop=args.crop)
    t = time.perf_counter(); plan = HostPlan(cpu, pooling_strides(model)); plan_ms = (time.perf_counter() - t) * 1000
    planned = to_device({**cpu, "_host_plan": plan}, dev)
    sync(dev)
    assert planned["_host_plan"] is not None
    res = dict(device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", points=len(plain["coord"]),
               torch=torch.__version__, plan_cpu_ms=plan_ms, strides=plan.strides, tasks={})
    def residual(fn, on:bool):
        "`fn` run with the fused residual switch at `on` (restored after)"
        def run():
            before = M._fused_residual
            M.set_fused_residual(on)
            try: return fn()
            finally: M.set_fused_residual(before)
        return run
    variants = [("plain", plain, True), ("planned", planned, True)] + ([("planned_torch_residual", planned, False)] if args.torch_residual else [])
    steps = {v: {t: residual(step_fn(t, model, head, d, labels), on) for t in args.tasks.split(",")} for v, d, on in variants}
    # the same function: inference outputs bitwise equal
    outs = [steps[v]["infer"]().float() for v in ("plain", "planned")] if "infer" in args.tasks else []
    res["infer_bitwise_equal"] = bool(torch.equal(*outs)) if outs else None
    for task in args.tasks.split(","):
        rec = {v: dict(latency=[], host=[], chained=[], behind_queue=[]) for v in steps}
        for v in steps:
            for _ in range(3): steps[v][task]()
        sync(dev)
        for r in range(args.rounds):
            for v in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
                fn = steps[v][task]
                for _ in range(args.repeats):
                    t = time.perf_counter(); fn(); h = time.perf_counter(); sync(dev); e = time.perf_counter()
                    rec[v]["latency"].append((e - t) * 1000); rec[v]["host"].append((h - t) * 1000)
                t = time.perf_counter()
                for _ in range(args.chain): fn()
                sync(dev); rec[v]["chained"].append((time.perf_counter() - t) * 1000 / args.chain)
                if dev.type == "cuda":
                    queue_gpu_work(dev, args.queue_ms)
                    t = time.perf_counter(); fn(); rec[v]["behind_queue"].append((time.perf_counter() - t) * 1000)
                    sync(dev)
        res["tasks"][task] = {v: {**{f"{k}_median_ms": statistics.median(x) for k, x in d.items() if x}, "all": d}
                              for v, d in rec.items()}
        row = res["tasks"][task]
        print(f"{task}: " + "; ".join(f"{v} latency {row[v]['latency_median_ms']:.1f} (host {row[v]['host_median_ms']:.1f}) "
                                      f"chained {row[v]['chained_median_ms']:.1f}"
                                      + (f" behind-queue host {row[v]['behind_queue_median_ms']:.1f}" if dev.type == "cuda" else "")
                                      for v in steps), flush=True)
    print(f"plan on the CPU: {plan_ms:.1f} ms for {res['points']} points; inference bitwise equal: {res['infer_bitwise_equal']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
