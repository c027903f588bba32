"""Summarise py-spy's raw (collapsed) stacks: per thread, the share of samples per innermost Python line and per
function (inclusive), optionally only the stacks that pass through a given frame (e.g. the timed loop).

    python bench/spy_summary.py spy_ft.txt --within "loop (loop_steps.py" --top 30
"""
import argparse, collections, re

FRAME = re.compile(r"^(.*) \((.*)\)$")


def summarise(path:str, within:str|None=None) -> dict:
    "{thread: dict(samples, innermost=Counter, inclusive=Counter)} of the stacks holding `within` (all if None)"
    out = collections.defaultdict(lambda: dict(samples=0, innermost=collections.Counter(), inclusive=collections.Counter()))
    for line in open(path):
        line = line.rstrip()
        if not line: continue
        stack, n = line.rsplit(" ", 1)
        frames = stack.split(";")
        if within and within not in stack: continue
        t = out[frames[0]]; t["samples"] += int(n)
        py = [f for f in frames[1:] if ".py:" in f]
        if py: t["innermost"][py[-1]] += int(n)
        for name in dict.fromkeys(m.group(1) + " (" + m.group(2).rsplit(":", 1)[0].split("/")[-1] + ")"
                                  for f in py if (m := FRAME.match(f))):
            t["inclusive"][name] += int(n)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path"); p.add_argument("--within"); p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    res = summarise(args.path, args.within)
    total = sum(t["samples"] for t in res.values()) or 1
    for name, t in sorted(res.items(), key=lambda kv: -kv[1]["samples"]):
        n = t["samples"]
        print(f"== {name}: {n} samples ({n / total:.0%})")
        print("  innermost Python line:")
        for k, v in t["innermost"].most_common(args.top): print(f"    {v / n:6.1%}  {k}")
        print("  inclusive, per function:")
        for k, v in t["inclusive"].most_common(args.top): print(f"    {v / n:6.1%}  {k}")


if __name__ == "__main__":
    main()
