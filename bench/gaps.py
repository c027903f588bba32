"""Where the GPU idles during the issue's steps, and what the host was doing meanwhile (issue 9, speed).

For each task (bench/steps.py: infer, lin, ft) the script warms up, times `--steps` steps without the profiler, then
runs `--steps` steps under `torch.profiler` (CPU + CUDA), each step inside a `gaps/step<i>` marker that ends with a
device synchronisation, and parses the exported chrome trace:

- wall: the marker's duration (the step and its final synchronize, as bench/steps.py's `time_fn` times it);
- GPU busy: the union of the kernel, memcpy and memset intervals of every stream inside the step;
- gaps: the idle intervals between consecutive GPU activities (and from the step's start to its first kernel, and
  from its last kernel to its end) longer than `--min-gap-us`;
- attribution of each gap: the CPU call (cudaLaunchKernel, cudaGraphLaunch, cudaMemcpyAsync, ...) that launched the
  first GPU activity after the gap (chrome trace `args.correlation`), and the python frames and ops enclosing that
  call on its thread: the innermost and outermost `sonata_nb/` frames; flags for gaps that overlap a synchronising
  call (cudaStreamSynchronize, cudaDeviceSynchronize, blocking cudaMemcpy, aten::item, `.tolist()`) or a CUDA graph
  capture (cudaStreamBeginCapture..cudaStreamEndCapture, cudaGraphInstantiate, `_Template._capture`), and whether the
  launch came after the GPU went idle (the host was late) or before (the GPU waited on something else).

Two profiled passes per task (`--passes both`, the default): `nostack` (no python tracer: the timings closest to the
real step) and `stack` (`with_stack=True`: python frames for the attribution, but the tracer slows the host, so its
gaps are longer). The nostack pass's gaps get their python frames from the stack pass by aligning the two passes'
sequences of GPU activities (same kernels in the same launch order; the JSON says whether the alignment held).

    export PYTHONPATH=$PWD; timeout 150 python3 bench/gaps.py --scan .benchdata/scannet/scene0000_00 --tasks infer,lin \
        --steps 3 --json $OUT/gaps.json --md $OUT/gaps.md                    # one H100: ~40-80 s
    PYTHONPATH=. python bench/gaps.py --device cpu --tiny --crop 2000 --steps 1    # CPU check: no GPU events, says so

Markdown tables are printed (and written to `--md`); `--json` writes the summary (small); the raw traces go to `--out`
only with `--keep-trace`.
"""
import argparse, bisect, collections, difflib, gzip, json, os, re, shutil, statistics, sys, tempfile, time, warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import batch_arguments, TASKS, build, step_fn, sync, time_fn
from sonata_nb.model import SPCONV_ALGOS, set_half_layernorm, set_spconv_algo

ROOT = Path(__file__).resolve().parents[1]
STEP_PREFIX = "gaps/step"
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")  # GPU work; gpu_user_annotation and cuda_sync rows are not work
LAUNCH_CATS = ("cuda_runtime", "cuda_driver")  # CPU calls carrying `args.correlation`
HOST_CATS = ("python_function", "cpu_op", "user_annotation")  # what encloses a launch on its thread
SYNC_CALLS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cudaMemcpy2D",
              "cuStreamSynchronize", "cuCtxSynchronize", "cuEventSynchronize", "cuMemcpyDtoH", "cuMemcpyDtoH_v2"}
SYNC_OPS = {"aten::item", "aten::_local_scalar_dense"}
SYNC_PY = re.compile(r"<built-in method (tolist|item) of ")
CAPTURE_BEGIN = {"cudaStreamBeginCapture", "cudaStreamBeginCapture_v2", "cudaStreamBeginCaptureToGraph", "cuStreamBeginCapture",
                 "cuStreamBeginCapture_v2"}
CAPTURE_END = {"cudaStreamEndCapture", "cuStreamEndCapture"}
INSTANTIATE = re.compile(r"^cu(da)?GraphInstantiate")
CAPTURE_PY = re.compile(r"sonata_nb/model\.py\(\d+\): _capture$")


# ---------------------------------------------------------------------------------------------------------------------
# Trace parsing and analysis: plain functions of the chrome trace's events (list of dicts), no GPU needed

def load_trace(path) -> list:
    "The `traceEvents` of a chrome trace written by `torch.profiler` (`.json` or `.json.gz`)"
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f: trace = json.load(f)
    events = trace.get("traceEvents") if isinstance(trace, dict) else trace
    if not isinstance(events, list):
        raise ValueError(f"{path}: no `traceEvents` list; expected a chrome trace from torch.profiler's export_chrome_trace")
    return events


def spans(events, cats) -> list:
    "The complete ('ph': 'X') events of categories `cats`, each with `end` = ts + dur added, sorted by start"
    out = []
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in cats and "ts" in e:
            e["end"] = float(e["ts"]) + float(e.get("dur", 0)); e["ts"] = float(e["ts"])
            out.append(e)
    return sorted(out, key=lambda e: (e["ts"], -e["end"]))


def union(intervals) -> list:
    "Sorted, merged (start, end) pairs of `intervals` (touching intervals merge)"
    merged = []
    for s, e in sorted(intervals):
        if merged and s <= merged[-1][1]: merged[-1][1] = max(merged[-1][1], e)
        else: merged.append([s, e])
    return [tuple(m) for m in merged]


def overlap(lo:float, hi:float, merged:list, starts:list|None=None) -> float:
    "Length of [lo, hi] covered by `merged` (sorted disjoint (start, end) pairs; `starts` their starts, precomputed)"
    starts = [s for s, _ in merged] if starts is None else starts
    total, i = 0.0, max(0, bisect.bisect_right(starts, lo) - 1)
    while i < len(merged) and merged[i][0] < hi:
        total += max(0.0, min(hi, merged[i][1]) - max(lo, merged[i][0])); i += 1
    return total


def find_gaps(acts:list, # GPU activities (spans with ts, end), any order
              lo:float, hi:float, # the window (a step), µs
              min_gap_us:float=10.0) -> tuple: # gaps shorter than this are not listed (they count in idle)
    "(busy µs, idle µs, gaps): the union of `acts` clipped to [lo, hi], and the idle intervals longer than `min_gap_us`, each with the activity before (`prev`) and after (`next`) it (None at the window's edges)"
    inside = sorted((a for a in acts if a["end"] > lo and a["ts"] < hi), key=lambda a: (a["ts"], a["end"]))
    gaps, busy, cursor, prev = [], 0.0, lo, None  # cursor: end of the busy time so far
    for a in inside:
        s, e = max(a["ts"], lo), min(a["end"], hi)
        if s > cursor:
            if s - cursor > min_gap_us: gaps.append(dict(start=cursor, end=s, dur=s - cursor, prev=prev, next=a))
        if e > cursor:
            busy += e - max(s, cursor); cursor, prev = e, a
    if hi - cursor > min_gap_us: gaps.append(dict(start=cursor, end=hi, dur=hi - cursor, prev=prev, next=None))
    return busy, (hi - lo) - busy, gaps


def host_chains(host:dict, # (pid, tid) -> host spans (python_function, cpu_op, user_annotation) sorted by start
                queries:list) -> list: # (pid, tid, time µs)
    "For each query, the host spans of that thread enclosing that time, outermost first"
    out = [[] for _ in queries]
    by_thread = collections.defaultdict(list)
    for qi, (pid, tid, t) in enumerate(queries): by_thread[(pid, tid)].append((t, qi))
    for key, qs in by_thread.items():
        evs, i, stack = host.get(key, []), 0, []
        for t, qi in sorted(qs):
            while i < len(evs) and evs[i]["ts"] <= t:
                e = evs[i]; i += 1
                while stack and stack[-1]["end"] <= e["ts"]: stack.pop()
                stack.append(e)
            while stack and stack[-1]["end"] < t: stack.pop()
            out[qi] = [e for e in stack if e["end"] >= t]  # also drops spans of improperly nested frames
    return out


def label_of(chain:list, pattern:str="sonata_nb/") -> dict:
    "Names for a launch's enclosing chain: innermost/outermost `pattern` python frames, innermost python frame, cpu ops, and the grouping label"
    py = [e["name"] for e in chain if e.get("cat") == "python_function"]
    ours = [n for n in py if pattern in n]
    ops = [e["name"] for e in chain if e.get("cat") == "cpu_op"]
    inner, outer = (ours[-1] if ours else None), (ours[0] if ours else None)
    if inner: label = inner
    elif py: label = py[-1]
    elif ops: label = f"[op] {ops[0]}"  # e.g. the autograd engine's evaluate_function on the backward thread
    else: label = "(no enclosing frame)"
    dedup = [n for k, n in enumerate(ours) if k == 0 or n != ours[k - 1]]
    return dict(label=label, inner=inner, outer=outer, chain=dedup[-6:], python=py[-1] if py else None,
                op=ops[-1] if ops else None, outer_op=ops[0] if ops else None)


class Trace:
    "A parsed chrome trace: GPU activities, CPU launch calls by correlation id, host spans by thread, sync and capture intervals"
    def __init__(self, events:list, pattern:str="sonata_nb/"):
        self.pattern = pattern
        self.gpu = spans(events, GPU_CATS)
        self.launch, runtime = {}, spans(events, LAUNCH_CATS)
        for e in runtime:
            c = (e.get("args") or {}).get("correlation")
            if c is not None and (c not in self.launch or self.launch[c].get("cat") != "cuda_runtime"): self.launch[c] = e
        self.host = collections.defaultdict(list)
        hosts = spans(events, HOST_CATS)
        for e in hosts: self.host[(e.get("pid"), e.get("tid"))].append(e)
        self.ops = {(e.get("args") or {}).get("External id"): e for e in hosts if e.get("cat") == "cpu_op"}
        self.ops.pop(None, None)
        self.python = any(e.get("cat") == "python_function" for e in hosts)
        self.steps = [e for e in hosts if e.get("cat") == "user_annotation" and str(e.get("name", "")).startswith(STEP_PREFIX)]
        self.sync = union([(e["ts"], e["end"]) for e in runtime if e["name"] in SYNC_CALLS] +
                          [(e["ts"], e["end"]) for e in hosts if (e.get("cat") == "cpu_op" and e["name"] in SYNC_OPS) or
                           (e.get("cat") == "python_function" and SYNC_PY.match(e["name"]))])
        self.n_sync_calls = sum(e["name"] in SYNC_CALLS for e in runtime)
        windows, begun = [], {}
        for e in runtime:
            key = (e.get("pid"), e.get("tid"))
            if e["name"] in CAPTURE_BEGIN: begun[key] = e["ts"]
            elif e["name"] in CAPTURE_END and key in begun: windows.append((begun.pop(key), e["end"]))
            elif INSTANTIATE.match(e["name"]): windows.append((e["ts"], e["end"]))
        self.n_captures_runtime = sum(e["name"] in CAPTURE_BEGIN for e in runtime)
        py_caps = [(e["ts"], e["end"]) for e in hosts if e.get("cat") == "python_function" and CAPTURE_PY.search(e["name"])]
        self.n_captures_python = len(py_caps)
        self.capture = union(windows + py_caps)
        self._sync_starts, self._cap_starts = [s for s, _ in self.sync], [s for s, _ in self.capture]

    def step_acts(self, step) -> list:
        "GPU activities of a step (inside its marker), in launch order (correlation id, then start)"
        acts = [a for a in self.gpu if a["end"] > step["ts"] and a["ts"] < step["end"]]
        return sorted(acts, key=lambda a: ((a.get("args") or {}).get("correlation", -1), a["ts"]))

    def attribute(self, acts:list, times:list|None=None) -> list:
        "For each GPU activity: its launch call and the `label_of` its enclosing host chain (at `times[i]`, default the launch's start)"
        launches = [self.launch.get((a.get("args") or {}).get("correlation")) if a is not None else None for a in acts]
        threads = self.threads_of(launches)
        queries = [(*k, l["ts"] if times is None else times[i]) if l is not None else (None, None, 0.0)
                   for i, (l, k) in enumerate(zip(launches, threads))]
        out = [dict(launch=l, **label_of(c, self.pattern)) for l, c in zip(launches, host_chains(self.host, queries))]
        for o, a in zip(out, acts):
            if a is not None and o["launch"] is None: o["label"] = "(launch call not in the trace)"
        return out

    def threads_of(self, launches:list) -> list:
        "(pid, tid) of the host spans around each launch call: its own, else its enclosing op's (`External id`), else the thread with the deepest stack at that time"
        keys, out, todo = list(self.host), [], []
        for i, l in enumerate(launches):
            key = None if l is None else (l.get("pid"), l.get("tid"))
            if l is not None and key not in self.host:
                op = self.ops.get((l.get("args") or {}).get("External id"))
                if op is not None: key = (op.get("pid"), op.get("tid"))
                elif keys: todo.append(i)
            out.append(key)
        if todo:  # one sweep of every thread for all of them
            depth = [len(c) for c in host_chains(self.host, [(*k, launches[i]["ts"]) for i in todo for k in keys])]
            for j, i in enumerate(todo):
                d = depth[j * len(keys):(j + 1) * len(keys)]
                out[i] = keys[max(range(len(keys)), key=d.__getitem__)]
        return out


def analyze(events:list, # chrome trace events (dicts)
            min_gap_us:float=10.0, # gaps shorter than this are not listed
            pattern:str="sonata_nb/") -> dict: # python frames of the package
    "Per step (`gaps/step<i>` markers): wall, GPU busy and idle µs, and the gaps with their attribution (see the module doc)"
    tr = Trace(events, pattern)
    res = dict(trace=tr, gpu=bool(tr.gpu), python=tr.python, steps=[])
    if not tr.steps: raise ValueError(f"no `{STEP_PREFIX}<i>` user_annotation in the trace; profile the steps inside "
                                      f"torch.profiler.record_function('{STEP_PREFIX}<i>') markers")
    for k, st in enumerate(tr.steps):
        acts = tr.step_acts(st)
        busy, idle, gaps = find_gaps(acts, st["ts"], st["end"], min_gap_us)
        index = {id(a): i for i, a in enumerate(acts)}
        attr = tr.attribute([g["next"] for g in gaps])
        mids = tr.attribute([g["next"] for g in gaps], [(g["start"] + g["end"]) / 2 for g in gaps])
        for g, a, m in zip(gaps, attr, mids):
            l = a["launch"]
            g.update(step=k, at_us=g["start"] - st["ts"], next_idx=None if g["next"] is None else index[id(g["next"])],
                     kernel=None if g["next"] is None else g["next"].get("name"), launch_name=None if l is None else l["name"],
                     host_late=None if l is None else l["end"] > g["start"],
                     sync_us=overlap(g["start"], g["end"], tr.sync, tr._sync_starts),
                     capture_us=overlap(g["start"], g["end"], tr.capture, tr._cap_starts),
                     edge="start" if g["prev"] is None else ("end" if g["next"] is None else None),
                     mid_inner=m["inner"], via="own trace", **{k2: a[k2] for k2 in ("label", "inner", "outer", "chain", "python", "op", "outer_op")})
            if g["next"] is None: g["label"] = "(step end: the step's final synchronize)"
        caps = [(s, e) for s, e in tr.capture if e > st["ts"] and s < st["end"]]
        res["steps"].append(dict(wall_us=st["end"] - st["ts"], busy_us=busy, idle_us=idle, acts=acts, gaps=gaps,
                                 n_acts=len(acts), captures=len(caps), capture_host_us=sum(e - s for s, e in caps),
                                 sync_windows=sum(1 for s, e in tr.sync if st["ts"] <= s < st["end"])))
    return res


def align(a_names:list, b_names:list, limit:float=4e6) -> tuple:
    "(mapping index in a -> index in b, how): identical sequences one to one; else the common prefix and suffix, and difflib's matching blocks between them when that is cheap (len * len <= `limit`)"
    if a_names == b_names: return {i: i for i in range(len(a_names))}, "identical"
    n, m, p = len(a_names), len(b_names), 0
    while p < min(n, m) and a_names[p] == b_names[p]: p += 1
    q = 0
    while q < min(n, m) - p and a_names[n - 1 - q] == b_names[m - 1 - q]: q += 1
    mapping = {i: i for i in range(p)} | {n - 1 - j: m - 1 - j for j in range(q)}
    mid_a, mid_b = a_names[p:n - q], b_names[p:m - q]
    if mid_a and mid_b and len(mid_a) * len(mid_b) <= limit:
        sm = difflib.SequenceMatcher(None, mid_a, mid_b, autojunk=False)
        mapping |= {p + blk.a + j: p + blk.b + j for blk in sm.get_matching_blocks() for j in range(blk.size)}
    return mapping, f"aligned {len(mapping)} of {n} activities ({m} in the other pass)"


def attribute_through(light:dict, stacked:dict) -> list:
    "Give the gaps of `light` (a pass without python frames) the frames of the same GPU activities in `stacked` (a with_stack pass); one note per step"
    notes, tr = [], stacked["trace"]
    for k, st in enumerate(light["steps"]):
        if k >= len(stacked["steps"]): notes.append("no matching step in the stack pass"); continue
        other = stacked["steps"][k]["acts"]
        mapping, how = align([a.get("name") for a in st["acts"]], [a.get("name") for a in other])
        notes.append(how)
        todo = [g for g in st["gaps"] if g["next_idx"] is not None and g["next_idx"] in mapping]
        for g, a in zip(todo, tr.attribute([other[mapping[g["next_idx"]]] for g in todo])):
            g.update(label=a["label"], inner=a["inner"], outer=a["outer"], chain=a["chain"], python=a["python"], via="stack pass")
    return notes


CATEGORIES = ("step start: before the first kernel", "during a CUDA graph capture", "during a synchronising call",
              "host late: launched after the GPU went idle", "queued before the gap: the GPU waited on something else",
              "step end: last kernel to the synchronize's return", "gaps under --min-gap-us (not listed)")


def categories(res:dict) -> dict:
    "Idle ms per step split by cause: the step's edges, capture windows, synchronising calls, then host-late or queued launches, then the unlisted short gaps"
    out, n = dict.fromkeys(CATEGORIES, 0.0), max(1, len(res["steps"]))
    for st in res["steps"]:
        out[CATEGORIES[-1]] += st["idle_us"] - sum(g["dur"] for g in st["gaps"])
        for g in st["gaps"]:
            if g["edge"]: out[CATEGORIES[0] if g["edge"] == "start" else CATEGORIES[5]] += g["dur"]; continue
            cap = min(g["capture_us"], g["dur"]); syn = min(g["sync_us"], g["dur"] - cap)  # a capture and a sync rarely overlap
            out[CATEGORIES[1]] += cap; out[CATEGORIES[2]] += syn
            out[CATEGORIES[3] if g["host_late"] else CATEGORIES[4]] += g["dur"] - cap - syn
    return {k: v / 1e3 / n for k, v in out.items()}


_SOURCES = {}

def qualify(name:str|None, root:Path=ROOT) -> str|None:
    "A python frame `pkg/file.py(line): func` with the class of a method added (`Class.func`), read from the source under `root`"
    m = re.match(r"^(.*?)((?:sonata_nb|bench)/[\w/]+\.py)\((\d+)\): (\w+)$", name or "")
    if not m: return name
    path = root / m[2]
    if path not in _SOURCES: _SOURCES[path] = path.read_text().splitlines() if path.exists() else []
    lines, i = _SOURCES[path], int(m[3]) - 1
    if not (0 <= i < len(lines)) or not lines[i][:1].isspace(): return name  # a top-level function (or the source moved)
    for line in reversed(lines[:i]):
        c = re.match(r"class (\w+)", line)
        if c: return f"{m[1]}{m[2]}({m[3]}): {c[1]}.{m[4]}"
        if line[:1] and not line[:1].isspace() and not line.startswith(("@", "#", ")")): break  # inside a top-level function
    return name


def summarize(res:dict, top:int=15, longest:int=10) -> dict:
    "JSON-ready summary of `analyze`'s result: per-step totals, idle by attributed function (per step), the longest gaps"
    steps, n = res["steps"], max(1, len(res["steps"]))
    per_step = [dict(wall_ms=s["wall_us"] / 1e3, busy_ms=s["busy_us"] / 1e3, idle_ms=s["idle_us"] / 1e3,
                     busy_ratio=s["busy_us"] / s["wall_us"] if s["wall_us"] else 0.0, gpu_activities=s["n_acts"],
                     gaps=len(s["gaps"]), gaps_ms=sum(g["dur"] for g in s["gaps"]) / 1e3,
                     idle_in_sync_ms=sum(g["sync_us"] for g in s["gaps"]) / 1e3,
                     idle_in_capture_ms=sum(g["capture_us"] for g in s["gaps"]) / 1e3,
                     captures=s["captures"], capture_host_ms=s["capture_host_us"] / 1e3, sync_windows=s["sync_windows"]) for s in steps]
    gaps = [g for s in steps for g in s["gaps"]]
    groups = collections.defaultdict(lambda: dict(gaps=0, idle_us=0.0, sync_us=0.0, capture_us=0.0, late=0))
    for g in gaps:
        r = groups[g["label"]]
        r["gaps"] += 1; r["idle_us"] += g["dur"]; r["sync_us"] += g["sync_us"]; r["capture_us"] += g["capture_us"]
        r["late"] += bool(g["host_late"])
    rows = [dict(label=qualify(k), gaps_per_step=v["gaps"] / n, idle_ms_per_step=v["idle_us"] / 1e3 / n,
                 in_sync_ms_per_step=v["sync_us"] / 1e3 / n, in_capture_ms_per_step=v["capture_us"] / 1e3 / n,
                 host_late_share=v["late"] / v["gaps"]) for k, v in groups.items()]
    rows.sort(key=lambda r: -r["idle_ms_per_step"])
    def gap_row(g):
        return dict(us=g["dur"], step=g["step"], at_ms=g["at_us"] / 1e3, label=qualify(g["label"]), outer=qualify(g["outer"]),
                    chain=[qualify(c) for c in g["chain"]],
                    python=g["python"], op=g["op"], launch=g["launch_name"], kernel=(g["kernel"] or "")[:120] or None,
                    host_late=g["host_late"], in_sync_us=g["sync_us"], in_capture_us=g["capture_us"], edge=g["edge"],
                    mid_inner=qualify(g["mid_inner"]), via=g.get("via"))
    mean = lambda k: statistics.mean(s[k] for s in per_step) if per_step else 0.0
    return dict(gpu=res["gpu"], python_frames=res["python"], steps=per_step, categories=categories(res),
                mean={k: mean(k) for k in ("wall_ms", "busy_ms", "idle_ms", "busy_ratio", "gaps", "gaps_ms",
                                           "idle_in_sync_ms", "idle_in_capture_ms", "captures", "capture_host_ms", "sync_windows")},
                by_function=rows[:max(top, 30)],
                longest=[gap_row(g) for g in sorted(gaps, key=lambda g: -g["dur"])[:longest]])


# ---------------------------------------------------------------------------------------------------------------------
# Profiling (device side) and the report

def profile_steps(fn, device, steps:int, stack:bool, trace_path:Path) -> list:
    "Run `steps` calls of `fn` under torch.profiler, each in a `gaps/step<i>` marker ending with a synchronize; the warnings raised"
    from torch.profiler import ProfilerActivity, profile, record_function
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with profile(activities=acts, with_stack=stack, record_shapes=False) as prof:
            for i in range(steps):
                with record_function(f"{STEP_PREFIX}{i}"):
                    fn(); sync(device)
    prof.export_chrome_trace(str(trace_path))
    return sorted({f"{w.category.__name__}: {str(w.message)[:300]}" for w in caught})


def task_gaps(fn, device, args, task:str, tmp:Path) -> dict:
    "Warm-up, plain timing, then the profiled passes of one task; the summaries"
    plain = time_fn(fn, device, repeats=args.steps, warmup=args.warmup)
    out = dict(plain_ms=plain["ms"], plain_median_ms=plain["median_ms"], plain_host_ms=plain["host_ms"], passes={})
    results = {}
    for name in (("nostack", "stack") if args.passes == "both" else (args.passes,)):
        t = time.perf_counter()
        path = tmp / f"gaps_{task}_{name}.json"
        caught = profile_steps(fn, device, args.steps, name == "stack", path)
        t_prof = time.perf_counter() - t
        events = load_trace(path)
        res = analyze(events, args.min_gap_us)
        results[name] = res
        size_mb = path.stat().st_size / 2**20
        if args.keep_trace:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            with open(path, "rb") as src, gzip.open(Path(args.out) / f"{path.name}.gz", "wb") as dst: shutil.copyfileobj(src, dst)
        path.unlink()
        out["passes"][name] = dict(trace_mb=size_mb, events=len(events), profile_s=t_prof,
                                   parse_s=time.perf_counter() - t - t_prof, warnings=caught,
                                   captures_seen=dict(runtime=res["trace"].n_captures_runtime, python=res["trace"].n_captures_python))
        del events
        print(f"[gaps] {task} {name}: profiled in {t_prof:.1f} s, trace {size_mb:.0f} MB, parsed in "
              f"{out['passes'][name]['parse_s']:.1f} s", file=sys.stderr, flush=True)
    if "nostack" in results and "stack" in results and results["nostack"]["gpu"]:
        out["passes"]["nostack"]["alignment"] = attribute_through(results["nostack"], results["stack"])
    for name, res in results.items(): out["passes"][name].update(summarize(res, args.top, args.longest))
    return out


def fmt_label(s, width:int=70) -> str:
    s = "-" if s is None else str(s).replace("|", "/")
    return f"`{s if len(s) <= width else '...' + s[-(width - 3):]}`"


def task_table(task:str, r:dict, top:int=15) -> str:
    "Markdown for one task"
    lines = [f"### {task}: {statistics.median(r['plain_ms']):.1f} ms a step without the profiler "
             f"(host returns after {r['plain_host_ms']:.1f} ms)", "",
             "| pass | wall ms | GPU busy ms | idle ms | busy/wall | gaps > min (n, ms) | idle in syncs ms | idle in captures ms | captures, host ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, p in r["passes"].items():
        m = p["mean"]
        if not p["gpu"]:
            lines.append(f"| {name} | {m['wall_ms']:.1f} | no GPU activity | - | - | - | - | - | - |"); continue
        lines.append(f"| {name} | {m['wall_ms']:.1f} | {m['busy_ms']:.1f} | {m['idle_ms']:.1f} | {m['busy_ratio']:.2f} | "
                     f"{m['gaps']:.0f}, {m['gaps_ms']:.1f} | {m['idle_in_sync_ms']:.1f} | {m['idle_in_capture_ms']:.1f} | "
                     f"{m['captures']:.0f}, {m['capture_host_ms']:.1f} |")
    with_gpu = {name: p for name, p in r["passes"].items() if p["gpu"]}
    if with_gpu:
        lines += ["", "**Idle ms per step by cause**", "", f"| cause | {' | '.join(with_gpu)} |", "|---|" + "---|" * len(with_gpu)]
        for k in CATEGORIES: lines.append(f"| {k} | " + " | ".join(f"{p['categories'][k]:.2f}" for p in with_gpu.values()) + " |")
    for name, p in r["passes"].items():
        if not p["gpu"]:
            lines += ["", f"**{name}**: no GPU activity in the trace (device without CUDA, or CUPTI recorded no kernels): "
                      "wall time only, no gaps to attribute."]
            continue
        note = f" (frames from the stack pass: {'; '.join(sorted(set(p['alignment'])))})" if p.get("alignment") else ""
        lines += ["", f"**{name}: idle ms per step by the host function that launched the work ending the gap**{note}", "",
                  "| function (innermost sonata_nb frame, else python frame, else op) | gaps / step | idle ms / step | in sync | in capture | host late |",
                  "|---|---|---|---|---|---|"]
        for g in p["by_function"][:top]:
            lines.append(f"| {fmt_label(g['label'])} | {g['gaps_per_step']:.1f} | {g['idle_ms_per_step']:.2f} | "
                         f"{g['in_sync_ms_per_step']:.2f} | {g['in_capture_ms_per_step']:.2f} | {100 * g['host_late_share']:.0f} % |")
        lines += ["", f"**{name}: longest gaps**", "",
                  "| µs | step @ ms | launched from | outermost sonata_nb | op | launch | kernel after | flags |", "|---|---|---|---|---|---|---|---|"]
        for g in p["longest"]:
            flags = [f for f, on in (("sync", g["in_sync_us"] > 0), ("capture", g["in_capture_us"] > 0),
                                     ("host late", g["host_late"]), (f"step {g['edge']}", g["edge"])) if on]
            lines.append(f"| {g['us']:.0f} | {g['step']} @ {g['at_ms']:.2f} | {fmt_label(g['label'], 60)} | {fmt_label(g['outer'], 40)} | "
                         f"{fmt_label(g['op'], 30)} | {g['launch'] or '-'} | {fmt_label(g['kernel'], 40)} | {', '.join(flags) or '-'} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    batch_arguments(p)
    p.add_argument("--tasks", nargs="+", default=["infer,lin"], help=f"comma- or space-separated, from {','.join(TASKS)}")
    p.add_argument("--steps", type=int, default=3, help="timed and profiled steps per task and pass")
    p.add_argument("--warmup", type=int, default=3, help="steps before timing and profiling")
    p.add_argument("--min-gap-us", type=float, default=10.0, help="list idle gaps longer than this (µs)")
    p.add_argument("--passes", choices=["both", "nostack", "stack"], default="both",
                   help="profile without the python tracer (faithful timing), with it (frames), or both (frames mapped onto the first)")
    p.add_argument("--top", type=int, default=15, help="functions in the printed table")
    p.add_argument("--longest", type=int, default=10, help="longest gaps listed")
    p.add_argument("--half-layernorm", choices=["frozen", "on", "off"], default="frozen")
    p.add_argument("--spconv-algo", choices=sorted(SPCONV_ALGOS), help="lever: spconv algorithm on CUDA")
    p.add_argument("--json", help="write the summary here")
    p.add_argument("--md", help="also write the printed markdown here")
    p.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).resolve().parent / "out"),
                   help="folder for the raw traces (--keep-trace)")
    p.add_argument("--keep-trace", action="store_true", help="also write the raw chrome traces (gzipped) to --out")
    args = p.parse_args(argv)
    tasks = [t for arg in args.tasks for t in arg.split(",") if t]
    bad = [t for t in tasks if t not in TASKS]
    if bad: p.error(f"--tasks: unknown {bad}; choose from {','.join(TASKS)}")
    if args.steps < 1: p.error("--steps must be at least 1")
    t0 = time.perf_counter()
    torch.backends.cudnn.benchmark = True
    set_half_layernorm(dict(frozen="frozen", on=True, off=False)[args.half_layernorm]); set_spconv_algo(args.spconv_algo)
    model, head, data, labels = build(args.device, args.tiny, args.scan, args.copies, args.crop)
    print(f"[gaps] built in {time.perf_counter() - t0:.1f} s: {len(data['coord'])} points", file=sys.stderr, flush=True)
    cuda = args.device.startswith("cuda")
    report = dict(device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__, points=len(data["coord"]),
                  tiny=args.tiny, steps=args.steps, warmup=args.warmup, min_gap_us=args.min_gap_us,
                  levers=dict(half_layernorm=args.half_layernorm, spconv_algo=args.spconv_algo),
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), tasks={})
    with tempfile.TemporaryDirectory(prefix="gaps_") as tmp:
        for task in tasks:
            report["tasks"][task] = task_gaps(step_fn(task, model, head, data, labels), args.device, args, task, Path(tmp))
            if args.json: Path(args.json).write_text(json.dumps(report, indent=1))  # kept if a later task times out
    report["seconds"] = time.perf_counter() - t0
    if args.json: Path(args.json).write_text(json.dumps(report, indent=1))
    md = (f"**GPU idle gaps** ({report['device']}, torch {report['torch']}, {report['points']} points, {args.steps} steps per "
          f"pass, gaps > {args.min_gap_us:g} µs; {report['seconds']:.0f} s in all)\n\n" +
          "\n\n".join(task_table(t, r, args.top) for t, r in report["tasks"].items()))
    if args.md: Path(args.md).write_text(md + "\n")
    print(md)
    return report


if __name__ == "__main__":
    main()
