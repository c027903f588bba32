"""Where the issue's three tasks make the CPU wait for the GPU (CUDA only).

Every host-device synchronisation (`.tolist()`, `.item()`, a size that depends on the data such as `bincount`,
`unique`, `nonzero`, boolean indexing, a device-to-host copy) drains the GPU's queue: after it the GPU idles until the
CPU has launched enough new work. This script runs one step of each task (bench/steps.py, the issue's batch) under
`torch.cuda.set_sync_debug_mode("warn")` and counts the synchronisations by the innermost sonata_nb (or spconv) line
that caused them; JSON (--json) and a table per task.

    PYTHONPATH=. python bench/syncs.py --json bench/results/syncs_h100.json
"""
import argparse, collections, json, sys, time, traceback, warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import DEFAULT_SCAN, TASKS, build, step_fn


def site_of(stack) -> str:
    "The innermost frame of the package (or of spconv) in `stack`, as `file:line function`"
    for frame in reversed(stack):
        f = frame.filename.replace("\\", "/")
        if "/sonata_nb/" in f or "/spconv/" in f or "/bench/" in f:
            return f"{'/'.join(f.split('/')[-2:])}:{frame.lineno} {frame.name}"
    return "(outside the package)"


def count_syncs(fn) -> collections.Counter:
    "Synchronising calls of one `fn()` by site"
    fn(); torch.cuda.synchronize()  # warm-up: caches (layouts, kernel maps) are filled as in a real step
    sites = collections.Counter()
    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message).lower():
            sites[site_of(traceback.extract_stack()[:-1])] += 1
    with warnings.catch_warnings():  # restores warnings.showwarning on exit
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try: fn()
        finally: torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sites


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scan", default=str(DEFAULT_SCAN), help="ScanNet scans/<scene> folder (raw _vh_clean_2.ply)")
    p.add_argument("--copies", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="narrow encoder")
    p.add_argument("--json", help="write the counts here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available(): p.error("bench/syncs.py needs a CUDA device (sync debug mode is CUDA only)")
    model, head, data, labels = build("cuda", args.tiny, args.scan, args.copies)
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, points=len(data["coord"]),
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), tasks={})
    for task in TASKS:
        sites = count_syncs(step_fn(task, model, head, data, labels))
        res["tasks"][task] = dict(total=sum(sites.values()), sites=dict(sites.most_common()))
        print(f"\n**{task}**: {sum(sites.values())} synchronisations\n\n| site | count |\n|---|---|")
        for site, n in sites.most_common(): print(f"| `{site}` | {n} |")
    if args.json: Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
