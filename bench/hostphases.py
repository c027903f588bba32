"""Host (CPU) time per step spent in each phase of the encoder: where the launch-bound `infer` and `lin` steps spend
the host's time, without the profiler's overhead.

Each phase is a library function wrapped by a timer (inclusive time: a phase holds the phases it calls); the step runs
`--steps` times after `--warmup` without synchronising inside, so the figures are the host's time to issue the work.
A second table times the steps with settings toggled one at a time (interleaved rounds, medians).

    PYTHONPATH=. python bench/hostphases.py --json $OUT/hostphases.json --md $OUT/hostphases.md
"""
import argparse, collections, functools, json, statistics, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import batch_arguments, build, host_profile, portable_command, step_fn, sync
import sonata_nb.attention as A
import sonata_nb.model as M
import sonata_nb.structure as T

# (owner, attribute, label): functions looked up at call time through their owner, so wrapping the attribute reaches
# every caller
PHASES = [
    (M.PointTransformerV3, "forward", "encoder forward (all)"),
    (M, "plan_pooling", "plan_pooling (the one device read)"),
    (M.Embedding, "forward", "embedding"),
    (T.Point, "serialization", "serialization (all stages)"),
    (T, "encode_orders", "  encode_orders"),
    (T.Point, "sparsify", "sparsify"),
    (M.GridPooling, "forward", "grid pooling (incl. its serialization, sparsify)"),
    (M, "unique_cells", "  unique_cells"),
    (M.Stage, "forward", "stages (all, incl. pooling)"),
    (M.SubMConv3d, "prepare_map", "neighbour maps (prepare_map)"),
    (A.SerializedAttention, "get_layout", "patch layouts (get_layout)"),
    (A.SerializedAttention, "maps", "attention maps (maps, incl. layouts)"),
    (M._Template, "run", "template run (maps, copies, capture, replays)"),
    (M._Template, "_capture", "  capture (block launches + instantiate)"),
    (torch.cuda.CUDAGraph, "capture_end", "    capture_end (instantiate)"),
    (M._Template, "_copy_in", "  weight copies"),
    (torch.cuda.CUDAGraph, "replay", "  graph replays"),
    (M.Block, "forward", "blocks run as they are"),
    (M, "_block_info", "block signatures (_block_info)"),
]


def wrap(stats:dict):
    "Wrap every phase with a timer adding into `stats[label]` = [seconds, calls]; returns the undo list"
    undo = []
    for owner, attr, label in PHASES:
        fn = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
        if isinstance(fn, staticmethod): continue
        @functools.wraps(fn)
        def timed(*a, _fn=fn, _label=label, **k):
            t = time.perf_counter()
            try: return _fn(*a, **k)
            finally:
                s = stats[_label]; s[0] += time.perf_counter() - t; s[1] += 1
        setattr(owner, attr, timed)
        undo.append((owner, attr, fn))
    return undo


def phases(task:str, model, head, data, labels, steps:int, warmup:int) -> dict:
    "Host ms and calls per step of each phase, and the step's own host and wall ms"
    fn, dev = step_fn(task, model, head, data, labels), data["feat"].device
    stats = collections.defaultdict(lambda: [0.0, 0])
    undo = wrap(stats)
    try:
        for _ in range(warmup): fn()
        sync(dev); stats.clear()
        host = wall = 0.0
        for _ in range(steps):
            t = time.perf_counter(); fn(); h = time.perf_counter(); sync(dev); e = time.perf_counter()
            host += h - t; wall += e - t
    finally:
        for owner, attr, fn0 in undo: setattr(owner, attr, fn0)
    rows = {label: dict(ms=stats[label][0] * 1e3 / steps, calls=stats[label][1] / steps) for _, _, label in PHASES}
    return dict(step_host_ms=host * 1e3 / steps, step_wall_ms=wall * 1e3 / steps, phases=rows)


_MIN_REPLAYS = M.MIN_REPLAYS
SETTINGS = {  # name -> (apply, undo)
    "defaults": (lambda: None, lambda: None),
    "graphs_stage3_only": (lambda: setattr(M, "MIN_REPLAYS", 3), lambda: setattr(M, "MIN_REPLAYS", _MIN_REPLAYS)),
    "no_graphs": (lambda: M.set_block_graphs(False), lambda: M.set_block_graphs(True)),
}


def settings_rounds(model, head, data, labels, rounds:int, repeats:int) -> dict:
    "Median wall and host ms of infer and lin under each setting, rounds interleaved"
    dev, out = data["feat"].device, collections.defaultdict(lambda: collections.defaultdict(list))
    for _ in range(rounds):
        for name, (apply, undo) in SETTINGS.items():
            apply()
            try:
                for task in ("infer", "lin"):
                    fn = step_fn(task, model, head, data, labels)
                    for _ in range(3): fn()
                    sync(dev)
                    for _ in range(repeats):
                        t = time.perf_counter(); fn(); h = time.perf_counter(); sync(dev); e = time.perf_counter()
                        out[name][task].append(((e - t) * 1e3, (h - t) * 1e3))
            finally: undo()
    return {name: {task: dict(median_ms=statistics.median(w for w, _ in v), host_ms=statistics.median(h for _, h in v))
                   for task, v in tasks.items()} for name, tasks in out.items()}


def table(res:dict) -> str:
    tasks = list(res["tasks"])
    lines = [f"**Host ms per step by phase** ({res['device']}, {res['points']} points, {res['steps']} steps, inclusive)", "",
             "| phase | " + " | ".join(f"{t} ms | {t} calls" for t in tasks) + " |", "|---|" + "---|---|" * len(tasks)]
    lines.append("| **step: host returns** | " + " | ".join(f"{res['tasks'][t]['step_host_ms']:.2f} | 1" for t in tasks) + " |")
    lines.append("| **step: wall (synchronised)** | " + " | ".join(f"{res['tasks'][t]['step_wall_ms']:.2f} | 1" for t in tasks) + " |")
    for _, _, label in PHASES:
        cells = [f"{res['tasks'][t]['phases'][label]['ms']:.2f} | {res['tasks'][t]['phases'][label]['calls']:.0f}" for t in tasks]
        lines.append(f"| {label.replace(' ', '&nbsp;', len(label) - len(label.lstrip()))} | " + " | ".join(cells) + " |")
    if res.get("settings"):
        lines += ["", "**Settings, interleaved rounds** (median wall ms, host ms)", "", "| setting | infer | lin |", "|---|---|---|"]
        for name, r in res["settings"].items():
            lines.append(f"| {name} | " + " | ".join(f"{r[t]['median_ms']:.1f} ({r[t]['host_ms']:.1f})" for t in ("infer", "lin")) + " |")
    if res.get("cprofile_lin"):
        lines += ["", "**cProfile of the lin step** (ms per step; own time holds the C calls Python does not list)", "",
                  "| function | calls | own ms | cumulative ms |", "|---|---|---|---|"]
        lines += [f"| `{r['fn']}` | {r['calls']} | {r['own_ms']:.2f} | {r['cum_ms']:.2f} |" for r in res["cprofile_lin"]]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    batch_arguments(p)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the settings table (0: none)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--cprofile", type=int, default=40, help="cProfile the lin step: this many functions by own time (0: none)")
    p.add_argument("--json"); p.add_argument("--md")
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    model, head, data, labels = build(args.device, args.tiny, args.scan, args.copies, args.crop)
    dev = torch.device(args.device)
    res = dict(command=portable_command(sys.argv), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               device=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", torch=torch.__version__,
               points=len(data["coord"]), steps=args.steps, tasks={})
    for task in ("infer", "lin"):
        res["tasks"][task] = phases(task, model, head, data, labels, args.steps, args.warmup)
    if args.cprofile: res["cprofile_lin"] = host_profile(step_fn("lin", model, head, data, labels), top=args.cprofile)
    if args.rounds: res["settings"] = settings_rounds(model, head, data, labels, args.rounds, args.repeats)
    md = table(res)
    print(md)
    if args.json: Path(args.json).write_text(json.dumps(res, indent=1))
    if args.md: Path(args.md).write_text(md + "\n")


if __name__ == "__main__": main()
