"""One task's steps in a loop, for an outside sampling profiler (py-spy): warm-ups first, then `--seconds` of steps.

    py-spy record -r 200 --threads -f raw -o spy_ft.txt -- python bench/loop_steps.py --task ft --seconds 6
    python bench/spy_summary.py spy_ft.txt --within "loop_steps.py:main"
"""
import argparse, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import TASKS, batch_arguments, build, step_fn, sync


def loop(run, seconds:float) -> int:
    "Steps run in `seconds` (the profiler's samples of this function are the steady state)"
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < seconds: run(); n += 1
    return n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    batch_arguments(p)
    p.add_argument("--task", default="ft", choices=TASKS)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--warmup", type=int, default=6)
    args = p.parse_args()
    model, head, data, labels = build(args.device, args.tiny, args.scan, args.copies, args.crop)
    run = step_fn(args.task, model, head, data, labels)
    for _ in range(args.warmup): run()
    sync(args.device)
    t = time.perf_counter(); n = loop(run, args.seconds); sync(args.device)
    print(f"{args.task}: {n} steps, {(time.perf_counter() - t) / max(n, 1) * 1e3:.1f} ms a step", flush=True)


if __name__ == "__main__":
    main()
