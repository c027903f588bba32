"""The issue's three tasks on one batch (shared by bench/profile_steps.py and bench/gpu_all.py).

- infer: encoder + up-cast, eval, no grad;
- lin:   frozen encoder in train mode + up-cast + Linear, forward + backward (only the Linear learns);
- ft:    encoder + up-cast + Linear, forward + backward (everything learns).
Autocast float16 on CUDA (bfloat16 on the CPU, which has no float16 autocast), random weights, 20 classes.
"""
import argparse, os, statistics, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scan import DEFAULT_SCAN, issue_batch
from sonata_nb.model import SONATA_CONFIG, PointTransformerV3, upcast

TINY = dict(enc_depths=(1, 1, 1, 1, 1), enc_channels=(16, 16, 32, 32, 64), enc_num_head=(1, 1, 2, 2, 4),
            enc_patch_size=(128,) * 5)
TASKS = ("infer", "lin", "ft")


def batch_arguments(p:argparse.ArgumentParser, copies_help:str|None=None):
    "The flags every benchmark of the issue's batch shares: --device, --scan, --copies, --crop, --tiny"
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--scan", default=str(DEFAULT_SCAN), help="ScanNet scans/<scene> folder (raw _vh_clean_2.ply)")
    p.add_argument("--copies", type=int, default=3, help=copies_help or "copies of the scene in the batch")
    p.add_argument("--crop", type=int, default=None, help="keep this many points of the scene (CPU checks)")
    p.add_argument("--tiny", action="store_true", help="narrow encoder (CPU check of the script)")


def portable_command(argv:list) -> str:
    "The command line as run, with the repository's and $OUT's absolute paths written relative (no machine paths in results)"
    root, out = str(HERE.parent) + os.sep, os.environ.get("OUT")
    def rel(a):
        if out and a.startswith(out.rstrip(os.sep)): a = "$OUT" + a[len(out.rstrip(os.sep)):]
        return a.replace(root, "")
    return " ".join(rel(str(a)) for a in argv)


def amp_dtype(device) -> torch.dtype: return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16


def sync(device):
    if torch.device(device).type == "cuda": torch.cuda.synchronize()


def conv_tune_config() -> dict:
    "The Triton convolution kernels' block sizes from bench/conv_tune.py's best (`CONV_TUNE=path.json`; with `CONV_TUNE_STAGES=1` each stage's own best), set; the config in use"
    import json
    import sonata_nb.sparse_conv as SC
    if os.environ.get("CONV_TUNE"):
        tune = json.load(open(os.environ["CONV_TUNE"]))
        for kind, row in tune["best"].items():
            SC.CONV_CONFIG[kind] = tuple(row["config"].values())
            if hasattr(SC, "CONV_BY_WIDTH"): SC.CONV_BY_WIDTH[kind] = {}  # the sweep's best at every width, as it was measured
        if os.environ.get("CONV_TUNE_STAGES") == "1":
            if "best_per_stage" not in tune:
                raise SystemExit(f"CONV_TUNE_STAGES=1: {os.environ['CONV_TUNE']} has no best_per_stage (written by bench/conv_tune.py since 2026-12-07 20:15): rerun the sweep")
            for kind, row in tune["best_per_stage"].items():
                for stage, cfg in zip(tune["stages"], row["configs"]): SC.CONV_BY_WIDTH[kind][stage["channels"]] = tuple(cfg.values())
    return dict(SC.CONV_CONFIG, by_width={k: dict(v) for k, v in getattr(SC, "CONV_BY_WIDTH", {}).items()})  # (older trees: none)


def attention_tune_config() -> dict:
    "The attention kernels' block sizes from bench/attention_kernel.py --sweep's `best_config` (`ATTN_TUNE=path.json`), set; the config in use"
    import json
    import sonata_nb.attention_kernel as AK
    if os.environ.get("ATTN_TUNE"):
        for name, cfg in json.load(open(os.environ["ATTN_TUNE"]))["best_config"].items(): AK.CONFIG[name] = tuple(cfg)
    return dict(AK.CONFIG)


def row_tune_config() -> dict:
    "The row kernels' blocks by width from bench/probes/row_grid.py's best (`ROW_TUNE=path.json`), set; the config in use"
    import json
    import sonata_nb.kernels as K
    if not hasattr(K, "ROW_BY_WIDTH"): return {}  # (older trees)
    if os.environ.get("ROW_TUNE"):
        for kernel, res in json.load(open(os.environ["ROW_TUNE"]))["kernels"].items():
            for c, best in res["best_by_width"].items():
                if best["config"] is not None: K.ROW_BY_WIDTH[kernel][int(c)] = tuple(best["config"])
    return dict(config=dict(K.ROW_CONFIG), by_width={k: dict(v) for k, v in K.ROW_BY_WIDTH.items()})


def build(device, tiny:bool=False, scan=DEFAULT_SCAN, copies:int=3, crop:int|None=None, classes:int=20, seed:int=0):
    "(model, head, data, labels): the Sonata encoder (or a tiny one), a Linear head on its up-cast, the batch"
    torch.manual_seed(seed)
    model = PointTransformerV3(**{**SONATA_CONFIG, **(TINY if tiny else {})}).to(device)
    data = issue_batch(scan, copies=copies, crop=crop, device=device)
    with torch.no_grad(): width = upcast(model.eval()(data)).shape[1] if tiny else 1232
    head = torch.nn.Linear(width, classes).to(device)
    labels = torch.randint(0, classes, (len(data["coord"]),), generator=torch.Generator().manual_seed(seed)).to(device)
    return model, head, data, labels


HEAD_DTYPE_UPCAST = os.environ.get("BENCH_UPCAST_DTYPE", "1") != "0"  # 0: the float32 up-cast cast by the head (before 2026-12-07)

def step_fn(task:str, model, head, data, labels):
    "A no-argument callable running one `task` step (returns the up-cast features for infer)"
    amp = amp_dtype(data["feat"].device)
    dev = data["feat"].device.type
    # The mode (eval/train, frozen or not) is set when the mode changes, not at every step: walking the 700-odd
    # modules and 400-odd parameters costs ~5 ms of host time a step, which a user's loop pays once. For the same
    # reason a step clears the gradients of the trained parameters only, as `optimizer.zero_grad` does (before
    # 2026-12-06 09:20 the lin step walked the frozen encoder's modules too: ~2 ms of host time).
    if task == "infer":
        def run():
            if model.training: model.eval()
            with torch.no_grad(), torch.autocast(dev, dtype=amp): return upcast(model(data))
        return run
    if task not in ("lin", "ft"): raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    trained = []  # the parameters an optimizer would hold (a user's loop zeroes those, not the frozen encoder's)
    def run():
        if not model.training: model.train()
        if set_trainable(model, task == "ft") or not trained:
            trained[:] = [p for m in (model, head) for p in m.parameters() if p.requires_grad]
        with torch.autocast(dev, dtype=amp):  # the up-cast in the head's dtype, as `DefaultSegmentorV2` asks for it
            loss = F.cross_entropy(head(upcast(model(data), dtype=amp if HEAD_DTYPE_UPCAST else None)).float(), labels)
        loss.backward()
        for p in trained: p.grad = None  # optimizer.zero_grad(set_to_none=True)
    return run


def set_trainable(model, on:bool) -> bool:
    "requires_grad of every parameter, walked only when it changes (then True)"
    if getattr(model, "_bench_trainable", None) is on: return False
    model.requires_grad_(on); model._bench_trainable = on
    return True


def time_fn(fn, device, repeats:int=10, warmup:int=3) -> dict:
    "Median (and all) wall times in ms of `repeats` synchronized calls after `warmup` calls"
    for _ in range(warmup): fn()
    sync(device)
    ms, host = [], []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); h = time.perf_counter(); sync(device); e = time.perf_counter()
        ms.append((e - t) * 1000); host.append((h - t) * 1000)
    # host_ms: until the call returned, before the final synchronize (on CUDA: the time to launch the work; close to
    # median_ms means the CPU, not the GPU, sets the pace)
    return dict(median_ms=statistics.median(ms), ms=ms, host_ms=statistics.median(host))


def host_profile(fn, steps:int=3, top:int=25) -> list:
    "cProfile of `steps` calls (Python side): the `top` functions by own time, with their cumulative time, ms per call"
    import cProfile, pstats
    fn()
    pr = cProfile.Profile(); pr.enable()
    for _ in range(steps): fn()
    pr.disable()
    st = pstats.Stats(pr).stats
    rows = [dict(fn=f"{Path(f).name}:{line}:{name}", calls=cc // steps, own_ms=tt * 1000 / steps, cum_ms=ct * 1000 / steps)
            for (f, line, name), (cc, nc, tt, ct, callers) in st.items()]
    return sorted(rows, key=lambda r: -r["own_ms"])[:top]


def ft_memory(model, head, data, labels) -> dict:
    "GiB held after the ft forward (activations kept for backward) and the peak of the whole ft step (CUDA)"
    amp = amp_dtype(data["feat"].device)
    model.train(); set_trainable(model, True)
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); before = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=amp):
        loss = F.cross_entropy(head(upcast(model(data), dtype=amp)).float(), labels)
    torch.cuda.synchronize(); after_fwd = torch.cuda.memory_allocated(); fwd_peak = torch.cuda.max_memory_allocated()
    loss.backward(); torch.cuda.synchronize()
    res = dict(base_gib=before / 2**30, saved_gib=(after_fwd - before) / 2**30, fwd_peak_gib=fwd_peak / 2**30,
               step_peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    model.zero_grad(set_to_none=True); head.zero_grad(set_to_none=True)
    return res


def profile_fn(fn, device, steps:int=2, top:int=15) -> dict:
    "torch.profiler of `steps` calls: the `top` kernels by device time (CPU ops by self time on the CPU)"
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    cuda = torch.device(device).type == "cuda"
    fn(); sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(steps): fn()
        sync(device)
    wall = (time.perf_counter() - t) * 1000 / steps
    def device_us(e):
        us = getattr(e, "self_device_time_total", None)
        return e.self_cuda_time_total if us is None else us
    events = prof.key_averages()
    kernels = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA] if cuda else []
    if cuda and not kernels: kernels = events  # no kernel rows in this torch build: ops by their self device time
    rows = []
    for e in (kernels if cuda else events):
        us = device_us(e) if cuda else e.self_cpu_time_total
        if us > 0: rows.append(dict(name=e.key, calls=max(1, e.count // steps), total_ms=us / 1000 / steps))
    busy = sum(r["total_ms"] for r in rows)
    rows.sort(key=lambda r: -r["total_ms"])
    for r in rows: r["pct"] = 100 * r["total_ms"] / busy if busy else 0.0
    return dict(step_ms=wall, busy_ms=busy, kind="cuda kernels" if cuda else "cpu ops (self time)", top=rows[:top])


def profile_table(task:str, res:dict) -> str:
    "Markdown table of one task's profile"
    lines = [f"**{task}**: {res['step_ms']:.1f} ms per step under the profiler, {res['busy_ms']:.1f} ms of {res['kind']}", "",
             "| kernel | calls / step | ms / step | % of busy |", "|---|---|---|---|"]
    for r in res["top"]:
        name = r["name"] if len(r["name"]) <= 90 else r["name"][:87] + "..."
        lines.append(f"| `{name.replace('|', '/')}` | {r['calls']} | {r['total_ms']:.2f} | {r['pct']:.1f} |")
    return "\n".join(lines)
