"""Lovász-softmax forward + backward: the implementation of sonata_nb.losses against the per-class loop (one sort per
class, the reference's) and against the one-sort version of 2026-12-05 (a stable argsort of (class, error) keys, backward
through autograd's graph), on random logits of the demo lin batch size (16,384 points) and of a validation room
(60,000 points).

    python bench/lovasz.py [--json bench/results/lovasz_cpu.json]

Median of 20 calls after 3 warm-up calls, 1 and 2 torch threads; the 1-minute load average is recorded (shared machine).
"""
import argparse, datetime, json, os, platform, statistics, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [q for q in sys.path if Path(q or ".").resolve() != ROOT/"bench"]
import torch

from sonata_nb.losses import lovasz_grad, lovasz_softmax


def loop_lovasz_softmax(probs, labels):
    "The replaced implementation: one sort per class present"
    losses = []
    for c in labels.unique():
        fg = (labels == c).to(probs.dtype)
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, 0, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm]).to(probs.dtype)))
    return sum(losses) / len(losses)


def argsort_graph_lovasz_softmax(probs, labels):
    "The 2026-12-05 version: all classes in one stable argsort of (class, decreasing error) keys, autograd's backward"
    classes, n = labels.unique(), len(labels)
    fg = labels[None] == classes[:, None]
    errors = (fg.to(probs.dtype) - probs.t()[classes]).abs()
    bits = errors.detach().float().view(torch.int32).long()
    perm = ((torch.arange(len(classes))[:, None] << 32) | (0x7FFFFFFF - bits)).view(-1).argsort(stable=True)
    errors_sorted, fg_sorted = errors.reshape(-1)[perm].view_as(errors), fg.reshape(-1)[perm].view_as(fg)
    return (errors_sorted * lovasz_grad(fg_sorted).to(probs.dtype)).sum(-1).mean()


def median_ms(f, logits, labels, n=20):
    x = logits.clone().requires_grad_()
    times = []
    for i in range(n + 3):
        t = time.perf_counter()
        x.grad = None; f(x.softmax(1), labels).backward()
        if i >= 3: times.append(time.perf_counter() - t)
    return round(1000 * statistics.median(times), 2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="also write the JSON here")
    args = p.parse_args(argv)
    res = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
               machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs", torch=torch.__version__,
               load_1min=[os.getloadavg()[0]], rows=[])
    g = torch.Generator().manual_seed(0)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for points, classes, present in ((16384, 20, 12), (60000, 20, 12)):
            logits, labels = torch.randn(points, classes, generator=g) * 2, torch.randint(0, present, (points,), generator=g)
            loop, graph = median_ms(loop_lovasz_softmax, logits, labels), median_ms(argsort_graph_lovasz_softmax, logits, labels)
            now = median_ms(lovasz_softmax, logits, labels)
            res["rows"].append(dict(threads=threads, points=points, classes=classes, present=present, loop_ms=loop,
                                    argsort_graph_ms=graph, current_ms=now, speedup=round(loop / now, 2),
                                    speedup_vs_argsort_graph=round(graph / now, 2)))
    res["load_1min"].append(os.getloadavg()[0])
    text = json.dumps(res, indent=1)
    print(text)
    if args.json: Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
