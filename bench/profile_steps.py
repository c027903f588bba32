"""torch.profiler of the issue's tasks (infer, lin, ft) on 3 x ScanNet scene0000_00 (2 cm grid), Sonata encoder.

    PYTHONPATH=. python bench/profile_steps.py                       # CUDA: full batch, fp16 autocast
    PYTHONPATH=. python bench/profile_steps.py --device cpu --tiny --crop 3000   # CPU check (tiny encoder, small crop)
    PYTHONPATH=. python bench/profile_steps.py --half-layernorm --spconv-algo native   # with speed levers

Writes `profile.json` (top kernels by device time per task: name, calls per step, ms per step, % of the busy time)
under $OUT (default bench/out/) and prints markdown tables.
"""
import argparse, json, os, sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import batch_arguments, TASKS, build, profile_fn, profile_table, step_fn
from sonata_nb.model import SPCONV_ALGOS, set_half_layernorm, set_spconv_algo


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    batch_arguments(p)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--steps", type=int, default=2, help="profiled steps per task (after one warm-up)")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--half-layernorm", choices=["frozen", "on", "off"], default="frozen",
                   help="lever: LayerNorm in the activation dtype where no gradient flows (the default), everywhere, or nowhere")
    p.add_argument("--spconv-algo", choices=sorted(SPCONV_ALGOS), help="lever: spconv algorithm on CUDA")
    p.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).resolve().parent / "out"))
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    set_half_layernorm(dict(frozen="frozen", on=True, off=False)[args.half_layernorm]); set_spconv_algo(args.spconv_algo)
    model, head, data, labels = build(args.device, args.tiny, args.scan, args.copies, args.crop)
    res = {t: profile_fn(step_fn(t, model, head, data, labels), args.device, args.steps, args.top) for t in args.tasks}
    report = dict(device=torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                  points=len(data["coord"]), tiny=args.tiny, levers=dict(half_layernorm=args.half_layernorm,
                  spconv_algo=args.spconv_algo), tasks=res)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "profile.json").write_text(json.dumps(report, indent=1))
    print("\n\n".join(profile_table(t, r) for t, r in res.items()))
    return report


if __name__ == "__main__":
    main()
