"""Throughput, peak memory and time breakdown of the Sonata encoder (PT-v3m2, full config, random weights).

Synthetic indoor scenes: points on the floor, ceiling, walls and box-shaped furniture of a 10 x 10 x 3 m room, one
point per 2 cm voxel, 9 features (coord, colour, normal). For batch 1 and 4, under bf16 autocast:
- eval: forward under no_grad; train: forward + backward of a scalar on the up-cast features;
- points/s, ms per batch, peak memory (torch.cuda.max_memory_allocated);
- share of the forward time in attention, sparse convolution, pooling (without its re-serialization) and
  serialization (+ sparsify), timed with CUDA events around those modules (a separate, instrumented run);
- agreement of the attention backends sdpa and auto (the library's default: the Triton patch-attention kernel on a GPU
  under autocast) with math on one batch (fp32 and the chosen autocast dtype).

    python bench/encoder.py                                 # H100: 100k points, batch 1 and 4
    python bench/encoder.py --json bench_encoder.json
    python bench/encoder.py --device cpu --points 5000 --tiny   # narrow model: checks the script on a CPU

First (printed first, unless --no-issue-case) the issue's exact case: three copies of ScanNet scene0000_00 after 2 cm
grid sampling (bench/scan.py, from the raw `_vh_clean_2.ply` in --scan, default .benchdata/scannet/scene0000_00),
eval and train, fp16 autocast on CUDA (bf16 on the CPU); skipped with a note when the scan folder is absent.

Needs only torch, spconv and this repository.
"""
import argparse, json, sys, time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`
from sonata_nb import attention
from sonata_nb.attention import SerializedAttention, get_attention_backend, set_attention_backend
from sonata_nb.model import SONATA_CONFIG, GridPooling, PointTransformerV3, SubMConv3d, upcast
from sonata_nb.structure import Point

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scan import DEFAULT_SCAN, issue_batch

TINY = dict(enc_depths=(1, 1, 1, 1, 1), enc_channels=(16, 16, 32, 32, 64), enc_num_head=(1, 1, 2, 2, 4),
            enc_patch_size=(128,) * 5)
DTYPES = dict(bf16=torch.bfloat16, fp16=torch.float16, fp32=None)


def room(n_points:int, seed:int, grid:float=0.02) -> dict:
    "A synthetic 10 x 10 x 3 m room with furniture, `n_points` points on distinct 2 cm voxels"
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([10.0, 10.0, 3.0])
    # surfaces as (origin, edge u, edge v): floor, ceiling, 4 walls, then 12 boxes (top + 4 sides each)
    quads = [([0, 0, 0], [10, 0, 0], [0, 10, 0]), ([0, 0, 3], [10, 0, 0], [0, 10, 0]),
             ([0, 0, 0], [10, 0, 0], [0, 0, 3]), ([0, 10, 0], [10, 0, 0], [0, 0, 3]),
             ([0, 0, 0], [0, 10, 0], [0, 0, 3]), ([10, 0, 0], [0, 10, 0], [0, 0, 3])]
    for _ in range(12):
        lo = torch.rand(3, generator=g) * torch.tensor([8.5, 8.5, 0.0])
        w, d, h = (torch.rand(3, generator=g) * torch.tensor([1.2, 1.2, 1.6]) + torch.tensor([0.3, 0.3, 0.4])).tolist()
        x, y = lo[0].item(), lo[1].item()
        quads += [([x, y, h], [w, 0, 0], [0, d, 0]), ([x, y, 0], [w, 0, 0], [0, 0, h]), ([x, y + d, 0], [w, 0, 0], [0, 0, h]),
                  ([x, y, 0], [0, d, 0], [0, 0, h]), ([x + w, y, 0], [0, d, 0], [0, 0, h])]
    o, u, v = (torch.tensor([q[i] for q in quads], dtype=torch.float32) for i in range(3))
    normal = torch.nn.functional.normalize(torch.linalg.cross(u, v), dim=1)
    area = torch.linalg.cross(u, v).norm(dim=1)
    m = int(n_points * 1.6)
    face = torch.multinomial(area, m, replacement=True, generator=g)
    st = torch.rand(m, 2, generator=g)
    coord = (o[face] + st[:, :1] * u[face] + st[:, 1:] * v[face]).clamp(min=torch.zeros(3), max=size)
    coord = coord + torch.randn(m, 3, generator=g) * 0.003  # sensor noise
    grid_coord = torch.div(coord - coord.min(0).values, grid, rounding_mode="floor").long()
    key = grid_coord[:, 0] << 40 | grid_coord[:, 1] << 20 | grid_coord[:, 2]
    _, first = torch.unique(key, return_inverse=True)
    pick = torch.full((int(first.max()) + 1,), m).scatter_reduce(0, first, torch.arange(m), "amin")
    pick = pick[torch.randperm(len(pick), generator=g)[:n_points]]
    coord, grid_coord = coord[pick], grid_coord[pick]
    color = torch.rand(len(pick), 3, generator=g)
    centred = coord - torch.cat([(coord[:, :2].max(0).values + coord[:, :2].min(0).values) / 2, coord[:, 2:].min(0).values])
    return dict(coord=centred, grid_coord=grid_coord, feat=torch.cat([centred, color, normal[face[pick]]], 1))


def batch_of(scenes, device) -> dict:
    "Concatenate scenes into one model input with cumulative `offset`"
    out = {k: torch.cat([s[k] for s in scenes]).to(device) for k in ("coord", "grid_coord", "feat")}
    out["offset"] = torch.tensor([len(s["coord"]) for s in scenes]).cumsum(0).to(device)
    return out


class Timer:
    "Exclusive time per category of nested regions, with CUDA events on the GPU (no synchronisation while running)"
    def __init__(self, device):
        self.cuda, self.stack, self.done = device.type == "cuda", [], []

    def _now(self):
        if not self.cuda: return time.perf_counter()
        e = torch.cuda.Event(enable_timing=True); e.record()
        return e

    def start(self, cat): self.stack.append([cat, self._now(), []])

    def stop(self):
        cat, t0, children = self.stack.pop()
        rec = (cat, t0, self._now(), children)
        (self.stack[-1][2] if self.stack else self.done).append(rec)

    def _ms(self, t0, t1): return t0.elapsed_time(t1) if self.cuda else (t1 - t0) * 1000

    def totals(self) -> dict:
        "Exclusive milliseconds per category"
        if self.cuda: torch.cuda.synchronize()
        out = defaultdict(float)
        def walk(rec):
            cat, t0, t1, children = rec
            out[cat] += self._ms(t0, t1) - sum(self._ms(c[1], c[2]) for c in children)
            for c in children: walk(c)
        for r in self.done: walk(r)
        self.done = []
        return dict(out)


def instrument(model, timer):
    "Time attention, sparse conv and pooling modules, and Point.serialization/sparsify, as categories of `timer`"
    kinds = ((SerializedAttention, "attention"), (SubMConv3d, "sparse conv"), (GridPooling, "pooling"))
    for mod in model.modules():
        for cls, cat in kinds:
            if isinstance(mod, cls):
                mod.register_forward_pre_hook(lambda m, a, cat=cat: timer.start(cat))
                mod.register_forward_hook(lambda m, a, o: timer.stop())
    for name in ("serialization", "sparsify"):
        original = getattr(Point, name)
        def timed(self, *a, _f=original, **k):
            timer.start("serialization")
            try: return _f(self, *a, **k)
            finally: timer.stop()
        setattr(Point, name, timed)


def run_once(model, data, train, amp):
    "One eval forward or one train forward + backward"
    with torch.autocast(data["feat"].device.type, dtype=amp, enabled=amp is not None):
        if train:
            model.train()
            out = model(data)
            loss = upcast(out).float().square().mean()
        else:
            model.eval()
            with torch.no_grad(): out = model(data)
    if train:
        loss.backward()
        model.zero_grad(set_to_none=True)
    return out


def sync(device):
    if device.type == "cuda": torch.cuda.synchronize()


def measure(model, data, train, amp, repeats, warmup, device) -> dict:
    "Mean wall time and peak memory of `repeats` runs after `warmup` runs"
    for _ in range(warmup): run_once(model, data, train, amp)
    sync(device)
    if device.type == "cuda": torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for _ in range(repeats): run_once(model, data, train, amp)
    sync(device)
    ms = (time.perf_counter() - t) / repeats * 1000
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return dict(ms=ms, points_per_s=len(data["coord"]) / ms * 1000, peak_gib=peak)


def compare_backends(model, data, amp, amp_name) -> list:
    "Up-cast features of one eval forward with sdpa and auto vs math, in fp32 and under `amp`"
    rows, saved = [], get_attention_backend()
    model.eval()
    for label, dtype in [("fp32", None)] + ([(amp_name, amp)] if amp is not None else []):
        feats = {}
        for backend in ("math", "sdpa", "auto"):
            set_attention_backend(backend)
            torch.manual_seed(0)  # the same order shuffles for every backend
            with torch.no_grad(), torch.autocast(data["feat"].device.type, dtype=dtype, enabled=dtype is not None):
                feats[backend] = upcast(model(data)).float()
        b = feats["math"]
        for backend in ("sdpa", "auto"):
            a = feats[backend]
            rows.append(dict(dtype=label, backend=backend, max_abs_diff=(a - b).abs().max().item(),
                             rel_l2=((a - b).norm() / b.norm()).item(),
                             min_cosine=torch.nn.functional.cosine_similarity(a, b, dim=1).min().item()))
    set_attention_backend(saved)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--points", type=int, default=100_000, help="grid-sampled points per scene")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="scenes per batch")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="autocast dtype (fp32: no autocast)")
    p.add_argument("--backend", default="auto", choices=list(attention.BACKENDS),
                   help="attention backend to time (auto: the library's default)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--tiny", action="store_true", help="narrow encoder (CPU check of the script)")
    p.add_argument("--no-compare", action="store_true", help="skip the sdpa / auto vs math comparison")
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--scan", default=str(DEFAULT_SCAN), help="ScanNet scans/<scene> folder for the issue's case")
    p.add_argument("--crop", type=int, default=None, help="issue case: keep this many points of the scan (CPU checks)")
    p.add_argument("--no-issue-case", action="store_true", help="skip the issue's 3 x scene0000_00 case")
    args = p.parse_args(argv)
    device, amp = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cpu" and amp is torch.float16: p.error("fp16 autocast is for the GPU; use bf16 or fp32 on the CPU")
    set_attention_backend(args.backend)

    torch.manual_seed(0)
    config = {**SONATA_CONFIG, **(TINY if args.tiny else {})}
    model = PointTransformerV3(**config).to(device)
    n_params = sum(q.numel() for q in model.parameters())
    issue = None if args.no_issue_case else issue_case(model, args, device)
    scenes = [room(args.points, seed=i) for i in range(max(args.batches))]
    env = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", torch=torch.__version__,
               dtype=args.dtype, backend=args.backend, params=n_params, tiny=args.tiny,
               points_per_scene=[len(s["coord"]) for s in scenes])
    results = []
    for bs in args.batches:
        data = batch_of(scenes[:bs], device)
        for train in (False, True):
            mode = "train" if train else "eval"
            try: res = measure(model, data, train, amp, args.repeats, args.warmup, device)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                results.append(dict(batch=bs, mode=mode, points=len(data["coord"]), error="out of memory"))
                continue
            results.append(dict(batch=bs, mode=mode, points=len(data["coord"]), **res))
            print(f"batch {bs} {mode}: {res['ms']:.1f} ms, {res['points_per_s']:.0f} points/s", file=sys.stderr)

    # time breakdown of the forward pass (instrumented run; hooks stay on from here)
    timer = Timer(device)
    instrument(model, timer)
    breakdown = []
    for bs in args.batches:
        data = batch_of(scenes[:bs], device)
        for train in (False, True):
            try:
                run_once(model, data, train, amp)  # warm-up with hooks
                timer.totals()
                sync(device)
                t = time.perf_counter()
                for _ in range(args.repeats): run_once(model, data, train, amp)
                sync(device)
                total = (time.perf_counter() - t) / args.repeats * 1000
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache(); continue
            parts = {k: v / args.repeats for k, v in timer.totals().items()}
            breakdown.append(dict(batch=bs, mode="train" if train else "eval", total_ms=total, **{f"{k}_ms": v for k, v in parts.items()}))

    comparison = [] if args.no_compare else compare_backends(model, batch_of(scenes[:1], device), amp, args.dtype)
    report = dict(env=env, issue_case=issue, results=results, breakdown=breakdown, backend_agreement=comparison)
    print(markdown(report))
    if args.json: Path(args.json).write_text(json.dumps(report, indent=1))
    return report


def issue_case(model, args, device) -> dict|None:
    "The issue's batch (3 x scene0000_00, 2 cm): eval and train timings, printed at once"
    if not (Path(args.scan) / f"{Path(args.scan).name}_vh_clean_2.ply").exists():
        print(f"issue case skipped: no scan in {args.scan} (pass --scan <scans/scene0000_00>)", flush=True)
        return None
    amp = torch.float16 if device.type == "cuda" else torch.bfloat16
    data = issue_batch(args.scan, copies=3, crop=args.crop, device=device)
    rows = []
    for train in (False, True):
        try: res = measure(model, data, train, amp, args.repeats, args.warmup, device)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache(); res = dict(error="out of memory")
        rows.append(dict(mode="train" if train else "eval", **res))
    n = len(data["coord"])
    print(f"Issue case: 3 x {Path(args.scan).name} ({n // 3:,} points each, {n:,} in all), autocast {str(amp)[6:]}, "
          f"{'tiny' if args.tiny else 'Sonata'} encoder", flush=True)
    for r in rows:
        print(f"  {r['mode']}: " + (r.get("error") or f"{r['ms']:.1f} ms, {r['points_per_s']:,.0f} points/s, "
                                     f"peak {r['peak_gib']:.2f} GiB"), flush=True)
    return dict(scan=Path(args.scan).name, points=n, dtype=str(amp)[6:], rows=rows)


def markdown(report) -> str:
    env = report["env"]
    lines = [f"Encoder: PT-v3m2 {'tiny' if env['tiny'] else 'Sonata'} ({env['params'] / 1e6:.1f}M params), {env['device']}, "
             f"torch {env['torch']}, autocast {env['dtype']}, attention {env['backend']}, "
             f"{env['points_per_scene'][0]} points per scene", "",
             "| batch | mode | points | ms / batch | points/s | peak GiB |", "|---|---|---|---|---|---|"]
    for r in report["results"]:
        if "error" in r: lines.append(f"| {r['batch']} | {r['mode']} | {r['points']} | {r['error']} | | |")
        else: lines.append(f"| {r['batch']} | {r['mode']} | {r['points']} | {r['ms']:.1f} | {r['points_per_s']:,.0f} | {r['peak_gib']:.2f} |")
    cats = ["attention", "sparse conv", "pooling", "serialization"]
    lines += ["", "Share of the wall time per batch (instrumented run; train: the backward pass is in 'other')", "",
              "| batch | mode | total ms | " + " | ".join(cats) + " | other |", "|---|---|---|" + "---|" * (len(cats) + 1)]
    for b in report["breakdown"]:
        parts = [b.get(f"{c}_ms", 0.0) for c in cats]
        shares = [f"{100 * x / b['total_ms']:.0f}% ({x:.1f} ms)" for x in parts]
        lines.append(f"| {b['batch']} | {b['mode']} | {b['total_ms']:.1f} | " + " | ".join(shares)
                     + f" | {100 * (1 - sum(parts) / b['total_ms']):.0f}% |")
    if report["backend_agreement"]:
        lines += ["", "Attention backends sdpa and auto vs math (batch 1, up-cast features)", "",
                  "| dtype | backend | max abs diff | relative L2 | min cosine |", "|---|---|---|---|---|"]
        for r in report["backend_agreement"]:
            lines.append(f"| {r['dtype']} | {r['backend']} | {r['max_abs_diff']:.2e} | {r['rel_l2']:.2e} | {r['min_cosine']:.6f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
