"""CPU inference of the full Sonata encoder (SONATA_CONFIG, random weights) + up-cast on one ScanNet scene.

    python bench/cpu_infer.py [--scan .benchdata/scannet/scene0000_00] [--repeats 3] [--json bench/results/cpu_infer.json]

fp32, no grad, eval mode, attention via torch SDPA; reports each repeat, the median and the 1-minute load average
before each repeat (other jobs share the machine).
"""
import argparse, datetime, json, os, platform, statistics, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan import DEFAULT_SCAN, issue_batch
from sonata_nb.model import SONATA_CONFIG, PointTransformerV3, upcast


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scan", default=str(DEFAULT_SCAN), help="ScanNet scans/<scene> folder")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--crop", type=int, default=None, help="keep only this many points (script check)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = PointTransformerV3(**SONATA_CONFIG).eval()
    data = issue_batch(args.scan, copies=1, crop=args.crop)
    times, loads = [], []
    with torch.no_grad():
        upcast(model(data))  # warm-up
        for _ in range(args.repeats):
            loads.append(os.getloadavg()[0])
            t = time.perf_counter(); feat = upcast(model(data)); times.append(time.perf_counter() - t)
            print(f"{times[-1]:.2f} s (load {loads[-1]:.2f})", file=sys.stderr)
    res = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
               machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
               torch=torch.__version__, threads=torch.get_num_threads(), points=len(data["coord"]),
               out_shape=list(feat.shape), params=sum(q.numel() for q in model.parameters()),
               seconds=times, median_s=statistics.median(times), load_1min=loads,
               command="python bench/cpu_infer.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(json.dumps(res, indent=1))
    if args.json: Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
