"""Where the `ft` step's memory goes: what the forward saves for the backward, and (CUDA) what is live at the peak.

    PYTHONPATH=. python bench/memory.py --scan .benchdata/scannet/scene0000_00 --json $OUT/memory.json     # one GPU
    PYTHONPATH=. python bench/memory.py --device cpu --crop 20000 --copies 1      # CPU: attribution only
    PYTHONPATH=. python bench/memory.py --device cpu --tiny --crop 3000           # CPU check of the script

The `ft` step of bench/steps.py (encoder + up-cast + Linear head, everything learning, fp16 autocast on CUDA, bf16 on
the CPU), once per variant (`--variants`: baseline and the levers of bench/gpu_all.py), after one warm-up step:

1. **Saved for the backward**: one forward under `torch.autograd.graph.saved_tensors_hooks` records every tensor autograd
   saves, counted once per storage (its storage's bytes), attributed to the innermost module running (forward hooks
   on all modules keep a module-path stack; the up-cast and the loss are named regions), its module type, its stage,
   its dtype and the torch function that saved it (a torch-function mode keeps the stack of torch calls; custom
   autograd Functions by their class). Kinds: activation, index (integer), weight cast (autocast's half copy of a
   parameter), parameter and input (resident anyway, not counted in "extra"). "Up-cast copies" are saved float32
   tensors made by a widening cast of a half tensor (exact: saving the half tensor and casting again in the
   backward gives the same bits); "source saved too" marks those whose half source is itself saved. Saved tensors
   hidden in autograd Functions' attributes (spconv keeps its masks there) are found by walking the graph.
   The backward then runs, so the hooks leave nothing behind; all hooks are removed.
2. **CUDA only**: memory allocated before the step (model, head, data), kept after the forward, the peak of the forward
   and the peak of the backward (`reset_peak_memory_stats` between them); then one step under
   `torch.cuda.memory._record_memory_history`: the peak found by replaying the allocation trace, the allocations live
   at the peak and at the end of the forward, summed by their allocating frame (innermost frame in sonata_nb, else
   an autograd node with `--cpp-stacks`, else bench/, spconv/, torch/autograd, torch/nn; backward allocations made by
   autograd's C++ engine carry no Python frame unless `--cpp-stacks`), and the largest of them.

Registering module hooks turns off the CUDA-graph path of `Stage`, but only inference uses it (ft trains).

Prints markdown tables; `--json` writes everything (the snapshot's summary, not the raw snapshot).
"""
import argparse, contextlib, json, math, re, sys, time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import batch_arguments, portable_command, amp_dtype, build, set_trainable, step_fn, sync
from gpu_all import VARIANTS as LEVER_VARIANTS, apply
from sonata_nb import kernels
from sonata_nb.model import upcast
from sonata_nb.structure import Point

VARIANTS = dict(baseline={}, **LEVER_VARIANTS)
DEFAULT_VARIANTS = "baseline,mlp_recompute,fused_ln,fused_ln_recompute"
GiB, MiB = 2**30, 2**20


# ---------------------------------------------------------------- the ft forward (as bench/steps.py's `ft` step)

def ft_forward(model, head, data, labels, region=lambda name: contextlib.nullcontext()):
    "The loss of `F.cross_entropy(head(upcast(model(data), dtype=amp)).float(), labels)` under autocast, freeing as that expression"
    dev = data["feat"].device.type
    with torch.autocast(dev, dtype=amp_dtype(dev)):
        x = model(data)
        with region("upcast"): x = upcast(x, dtype=amp_dtype(dev))  # the Point is released here, as the expression's temporary
        x = head(x)  # the up-cast features are released here
        with region("loss"):
            x = x.float()
            loss = F.cross_entropy(x, labels)
    return loss


def prepare(model, head):
    "Train mode, everything learning (as the `ft` step), gradients cleared"
    if not model.training: model.train()
    set_trainable(model, True)
    model.zero_grad(set_to_none=True); head.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- 1. saved-for-backward attribution

def stage_of(path:str) -> str:
    "embedding, enc0..enc4, head, upcast, loss, top level (PointTransformerV3.forward itself) or outside"
    if path.startswith("enc."): return path.split(".")[1]
    if path in ("", None): return "outside"
    if path == "model": return "top level"
    return path.split(".")[0]


def role_of(path:str) -> str:
    "Module path without stage and block numbers: enc.enc3.block7.mlp.0.fc1 -> block.mlp.fc1"
    p = re.sub(r"^enc\.enc\d+\.", "", path)
    p = re.sub(r"block\d+", "block", p)
    p = re.sub(r"\.(mlp|norm1|norm2|norm|act|drop_path|ls1|ls2)\.0(?=\.|$)", r".\1", p)
    return re.sub(r"\.cpe\.(\d)", lambda m: ".cpe." + ("conv", "linear", "norm")[int(m.group(1))], p)


class _TorchCalls(TorchFunctionMode):
    "Keeps the stack of torch functions being called (the op that saves a tensor is the innermost one)"
    def __init__(self, stack:list):
        super().__init__()
        self.stack = stack

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.stack.append(func)
        try: return func(*args, **(kwargs or {}))
        finally: self.stack.pop()


def _func_name(func) -> str:
    name = getattr(func, "__name__", None) or repr(func)
    return "Tensor." + name if getattr(func, "__qualname__", "").startswith(("Tensor.", "TensorBase.", "_TensorBase.")) else name


def _autograd_function(frame) -> str|None:
    "Name of the custom autograd Function whose `apply` is on the stack just above `frame` (its save_for_backward)"
    for _ in range(2):
        if frame is None: return None
        if frame.f_code.co_name == "apply" and frame.f_code.co_filename.replace("\\", "/").endswith("autograd/function.py"):
            cls = frame.f_locals.get("cls")
            return getattr(cls, "__name__", "autograd.Function")
        frame = frame.f_back
    return None


class SavedTensors:
    "Context manager: records every tensor autograd saves in a forward, by storage, with module, op, dtype and kind"
    def __init__(self, named_modules:dict, # path -> module (hooks on each)
                 params, # tensors resident anyway (parameters)
                 inputs): # tensors resident anyway (the batch, the labels)
        self.named_modules = named_modules
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in params}
        self.input_ptrs = {t.untyped_storage().data_ptr() for t in inputs}
        self.modules, self.calls, self.records, self.handles = [], [], {}, []
        self.saves, self.stage_shapes = 0, {}

    @contextlib.contextmanager
    def region(self, name:str): # a named region outside the modules (the up-cast, the loss)
        self.modules.append((name, "region"))
        try: yield
        finally: self.modules.pop()

    def _pre(self, path):
        def hook(mod, args): self.modules.append((path, type(mod).__name__))
        return hook

    def _post(self, path):
        def hook(mod, args, out):
            while self.modules and self.modules.pop()[0] != path: pass
            if isinstance(out, Point) and re.fullmatch(r"enc\.enc\d+|embedding", path):
                self.stage_shapes[stage_of(path)] = tuple(out.feat.shape)
        return hook

    def __enter__(self):
        for path, mod in self.named_modules.items():
            self.handles.append(mod.register_forward_pre_hook(self._pre(path)))
            self.handles.append(mod.register_forward_hook(self._post(path), always_call=True))
        self._mode = _TorchCalls(self.calls)
        self._saved = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._mode.__enter__(); self._saved.__enter__()
        return self

    def __exit__(self, *exc):
        self._saved.__exit__(*exc); self._mode.__exit__(*exc)
        for h in self.handles: h.remove()
        self.handles.clear()

    def _pack(self, t:torch.Tensor):
        self.saves += 1
        st = t.untyped_storage()
        key = (st.device.type, st.data_ptr()) if st.nbytes() else ("empty", id(t))
        rec = self.records.get(key)
        if rec is not None and not rec["ref"].expired():
            rec["saves"] += 1
            return t
        path, mtype = self.modules[-1] if self.modules else ("", "-")
        op = _autograd_function(sys._getframe(1)) or (_func_name(self.calls[-1]) if self.calls else "?")
        ptr = st.data_ptr()
        kind = ("parameter" if ptr in self.param_ptrs else "input" if ptr in self.input_ptrs else
                "activation" if t.is_floating_point() or t.is_complex() else "index")
        rec = dict(bytes=st.nbytes(), dtype=str(t.dtype).replace("torch.", ""), shape=list(t.shape), module=path,
                   type=mtype, op=op, kind=kind, saves=1, ref=StorageWeakRef(st), node=t.grad_fn, output_nr=t.output_nr)
        base = t._base if t._is_view() and t._base is not None else t  # a view (weight.t(), q of qkv): what made its base
        gf = base.grad_fn
        if gf is not None and gf.name() == "ToCopyBackward0":  # a cast: of a parameter, or of an activation
            src, nr = gf.next_functions[0]
            if src is not None and "AccumulateGrad" in src.name():
                if kind == "activation": rec["kind"] = "weight cast"
            elif src is not None:
                rec["cast_from"] = str(src._input_metadata[nr].dtype).replace("torch.", "")
                rec["src"] = (src, nr)
        if key in self.records: self.records[("freed", len(self.records))] = self.records[key]  # storage reused
        self.records[key] = rec
        return t

    def ctx_tensors(self, loss) -> list:
        "Tensors kept in attributes of custom autograd Functions (not through save_for_backward), not seen yet"
        seen_ptrs = {k[1] for k in self.records if k[0] not in ("empty", "freed")}
        out, nodes, stack = [], set(), [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or node in nodes: continue
            nodes.add(node)
            stack.extend(n for n, _ in node.next_functions)
            attrs = getattr(node, "__dict__", None)
            if not attrs: continue
            for name, v in attrs.items():
                for t in (v if isinstance(v, (list, tuple)) else [v]):
                    if not isinstance(t, torch.Tensor): continue
                    st = t.untyped_storage()
                    if st.data_ptr() in seen_ptrs or st.nbytes() == 0: continue
                    seen_ptrs.add(st.data_ptr())
                    out.append(dict(bytes=st.nbytes(), dtype=str(t.dtype).replace("torch.", ""), shape=list(t.shape),
                                    function=type(node).__name__, attribute=name))
        return out

    def finish(self, loss) -> dict:
        "Summary tables (call after the forward, before the backward)"
        kept = [r for k, r in self.records.items() if k[0] != "freed" and not r["ref"].expired()]
        freed = sum(r["bytes"] for k, r in self.records.items() if k[0] == "freed" or r["ref"].expired())
        for r in kept:  # up-cast copies: float32 saved from a half tensor; is the half source saved too?
            src = r.pop("src", None)
            r["upcast_copy"] = r.get("cast_from") in ("float16", "bfloat16") and r["dtype"] == "float32"
            r["source_saved"] = src is not None and any(q["node"] is src[0] and q["output_nr"] == src[1] for q in kept)
        ctx = self.ctx_tensors(loss)
        for r in kept: del r["node"], r["ref"]
        extra = [r for r in kept if r["kind"] not in ("parameter", "input")]
        def table(key, rows=extra):
            acc = defaultdict(lambda: dict(bytes=0, storages=0, saves=0))
            for r in rows:
                a = acc[key(r)]; a["bytes"] += r["bytes"]; a["storages"] += 1; a["saves"] += r["saves"]
            return sorted(({"key": list(k) if isinstance(k, tuple) else k, **v} for k, v in acc.items()),
                          key=lambda a: -a["bytes"])
        order = ["embedding", *sorted(self.stage_shapes.keys() - {"embedding"}), "upcast", "head", "loss", "top level", "outside"]
        by_stage = sorted(table(lambda r: stage_of(r["module"])), key=lambda a: order.index(a["key"]) if a["key"] in order else 99)
        for row in by_stage:
            shape = self.stage_shapes.get(row["key"])
            if shape: row["points"], row["channels"], row["bytes_per_point"] = shape[0], shape[1], row["bytes"] / max(shape[0], 1)
        ups = [r for r in extra if r["upcast_copy"]]
        self.records = {}  # drops the references to the graph's nodes
        return dict(candidates=candidates(extra, self.stage_shapes),
            total_bytes=sum(r["bytes"] for r in extra), saves=self.saves, storages=len(kept), freed_in_forward_bytes=freed,
            by_kind=table(lambda r: r["kind"], kept), by_stage=by_stage,
            by_dtype=table(lambda r: r["dtype"]), by_type=table(lambda r: r["type"]), by_op=table(lambda r: r["op"]),
            by_role=table(lambda r: (role_of(r["module"]), r["type"], r["op"], r["dtype"], r["kind"])),
            by_role_stage=table(lambda r: (stage_of(r["module"]), role_of(r["module"]), r["op"], r["dtype"])),
            upcast_copies=dict(bytes=sum(r["bytes"] for r in ups),
                               source_saved_bytes=sum(r["bytes"] for r in ups if r["source_saved"]),
                               by_role=table(lambda r: (role_of(r["module"]), r["op"], r["cast_from"], r["source_saved"]), ups)),
            largest=sorted(({k: r[k] for k in ("bytes", "dtype", "shape", "module", "op", "kind", "saves")} for r in extra),
                           key=lambda r: -r["bytes"])[:15],
            ctx_attributes=dict(bytes=sum(c["bytes"] for c in ctx), tensors=len(ctx),
                                largest=sorted(ctx, key=lambda c: -c["bytes"])[:10]),
            stage_shapes={k: list(v) for k, v in self.stage_shapes.items()})


def candidates(extra:list, # the saved records (activations, indices, weight casts)
               stage_shapes:dict) -> list: # stage -> (points, channels) of its output
    "Bytes that exact changes would not keep, each estimated from the saved records (disjoint, so they add up)"
    role = lambda r: role_of(r["module"])
    matrix = lambda r: len(r["shape"]) >= 2 and r["shape"][-1] > 1 and r["kind"] == "activation"
    rows = [
        ("MLP: GELU output saved by fc2; recompute it from fc1's output (`set_mlp_recompute`, exists)",
         [(r, 1) for r in extra if role(r) == "block.mlp.fc2" and matrix(r)]),
        ("pre-norm outputs saved by attn.qkv and mlp.fc1; recompute them from the LayerNorm's saved input and statistics "
         "(same kernel)", [(r, 1) for r in extra if matrix(r) and (role(r) in ("block.attn.qkv", "block.mlp.fc1") or (
             role(r) == "block.mlp" and r["shape"][-1] == stage_shapes.get(stage_of(r["module"]), (0, 0))[1]))]),
        ("attention output gathered for attn.proj; gather it again from the attention's saved output",
         [(r, 1) for r in extra if role(r) == "block.attn.proj" and matrix(r)]),
        ("float32 up-cast copies of half tensors (LayerNorm inputs under autocast, spconv on the CPU); save the half "
         "tensor (fused LayerNorm does for LayerNorms)", [(r, 1 if r["source_saved"] else 0.5) for r in extra if r["upcast_copy"]]),
        ("cpe.linear's output saved by cpe.norm (the half part); recompute it with the Linear from its saved input",
         [(r, 0.5 if r["upcast_copy"] else 1) for r in extra if role(r) == "block.cpe.norm" and matrix(r)]),
        ("norm2's float32 input x1 + branch; save the half attention branch instead, add again (x1 is saved by norm1)",
         [(r, 0.5) for r in extra if role(r) == "block.norm2" and matrix(r) and r["dtype"] == "float32"]),
        ("LayerNorm output saved by the GELU of the pooling and the embedding; recompute it (same kernel)",
         [(r, 1) for r in extra if role(r) in ("down.act", "embedding.stem.act") and matrix(r)]),
        ("autocast's half copies of the weights; cast them again in the backward", [(r, 1) for r in extra if r["kind"] == "weight cast"]),
    ]
    out = [dict(what=what, bytes=int(sum(r["bytes"] * f for r, f in rs)), storages=len(rs)) for what, rs in rows]
    head = [r for r in extra if r["module"] == "head" and matrix(r)]
    if head:  # the head's input: save the stages' features in half precision, up-cast them again in the backward
        small = sum(n * c * head[0]["bytes"] // max(1, math.prod(head[0]["shape"])) for k, (n, c) in stage_shapes.items()
                    if k.startswith("enc"))
        out.append(dict(what="the head's input (the up-cast features, half); fold the head into an up-cast Function that "
                        "saves the stages' half features and gathers them again in the backward", bytes=max(0, sum(r["bytes"] for r in head) - small),
                        storages=len(head)))
    return out


def saved_attribution(model, head, data, labels) -> dict:
    "One `ft` forward under the recorder, then its backward (which frees what the hooks saw)"
    prepare(model, head)
    named = {(n or "model"): m for n, m in model.named_modules()}
    named["head"] = head
    rec = SavedTensors(named, [*model.parameters(), *head.parameters()], [*data.values(), labels])
    t = time.perf_counter()
    with rec: loss = ft_forward(model, head, data, labels, rec.region)
    res = rec.finish(loss)
    loss.backward()
    del loss
    prepare(model, head)
    res["seconds"] = time.perf_counter() - t
    return res


# ---------------------------------------------------------------- 2. CUDA peaks and the allocation trace

def cuda_peaks(model, head, data, labels) -> dict:
    "Bytes allocated before the step, kept after the forward, peak of the forward, peak of the backward, after the step"
    prepare(model, head)
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    loss = ft_forward(model, head, data, labels)
    torch.cuda.synchronize()
    after_fwd, fwd_peak = torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()
    fwd_reserved = torch.cuda.max_memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    loss.backward(); torch.cuda.synchronize()
    after_bwd, bwd_peak = torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()
    del loss
    prepare(model, head); torch.cuda.synchronize()
    return dict(before=before, kept_by_forward=after_fwd - before, forward_peak=fwd_peak, backward_peak=bwd_peak,
                after_backward=after_bwd, grads=after_bwd - before, after_step=torch.cuda.memory_allocated(),
                step_peak=max(fwd_peak, bwd_peak), reserved_peak=max(fwd_reserved, torch.cuda.max_memory_reserved()))


MARK = 4099 * 512  # bytes of the marker allocations that delimit the recorded step in the trace


def _memory_mark():
    "A marker allocation (found in the trace by this function's name)"
    torch.empty(MARK, dtype=torch.uint8, device="cuda")


def _short(filename:str) -> str:
    f = filename.replace("\\", "/")
    for root in ("sonata_nb/", "bench/", "spconv/", "torch/"):
        i = f.rfind("/" + root)
        if i >= 0: return f[i + 1:]
    return f.rsplit("/", 1)[-1]


def frame_label(frames:list, phase:str) -> str:
    "The frame an allocation is charged to: innermost in sonata_nb, else a C++ autograd node, else the first"
    for f in frames:
        if "sonata_nb/" in f.get("filename", "").replace("\\", "/"):
            return f"{_short(f['filename'])}:{f['line']} {f['name']}"
    for f in frames:
        m = re.search(r"autograd::generated::(\w+)::apply", f.get("name", ""))
        if m: return f"autograd {m.group(1)}"
    for where in ("bench/", "spconv/", "torch/autograd", "torch/nn"):  # the script's line (head, loss), then libraries
        for f in frames:
            fn = f.get("filename", "").replace("\\", "/")
            if fn.endswith(".py") and where in fn: return f"{_short(fn)}:{f['line']} {f['name']}"
    if not frames: return f"(no Python frame: autograd engine, {phase})" if phase == "backward" else "(no frame)"
    f = frames[0]
    return f"{_short(f.get('filename', '?'))}:{f.get('line', '?')} {f.get('name', '?')}"


def _is_mark(entry) -> bool: return entry["size"] == MARK and any(f.get("name") == "_memory_mark" for f in entry.get("frames", []))


def snapshot_step(model, head, data, labels, cpp:bool, max_entries:int, top:int=20) -> dict:
    "One step recorded by the allocator: the peak, what is live there and at the forward's end, by allocating frame"
    prepare(model, head)
    torch.cuda.synchronize()
    record = torch.cuda.memory._record_memory_history
    try: record(max_entries=max_entries, stacks="all" if cpp else "python", clear_history=True)
    except TypeError: record(max_entries=max_entries, stacks="all" if cpp else "python")  # torch without clear_history
    try:
        before = torch.cuda.memory_allocated()
        _memory_mark()
        loss = ft_forward(model, head, data, labels)
        _memory_mark()
        loss.backward()
        del loss
        prepare(model, head)
        _memory_mark()
        torch.cuda.synchronize()
        t = time.perf_counter()
        snap = torch.cuda.memory._snapshot()
    finally: record(enabled=None)
    res = analyse_trace(snap["device_traces"][torch.cuda.current_device()], before, top)
    res["snapshot_seconds"] = time.perf_counter() - t
    return res


def analyse_trace(trace:list, # the allocator's trace entries (action, addr, size, frames[, time_us])
                  before:int, # bytes allocated when the first marker was made
                  top:int=20) -> dict:
    "Peak of the step between the last three markers (start, end of the forward, end), and the allocations live there"
    marks = [i for i, e in enumerate(trace) if e["action"] == "alloc" and _is_mark(e)]
    if len(marks) < 3: return dict(error=f"the trace holds {len(marks)} of the 3 markers (raise --max-entries)")
    start, fwd_end, end = marks[-3:]
    free_action = "free_requested" if any(e["action"] == "free_requested" for e in trace[start:end]) else "free_completed"
    phase = lambda i: "forward" if i < fwd_end else "backward"
    total, peak, peak_i = before, before, start
    for i in range(start, end + 1):  # the running total (as memory_allocated) and its maximum
        e = trace[i]
        if e["action"] == "alloc":
            total += e["size"]
            if total > peak and not _is_mark(e): peak, peak_i = total, i
        elif e["action"] == free_action: total -= e["size"]
    live, total, at = {}, before, {}
    for i in range(start, max(peak_i, fwd_end) + 1):  # the live allocations at the forward's end and at the peak
        e = trace[i]
        if e["action"] == "alloc": live[e["addr"]] = (i, e); total += e["size"]
        elif e["action"] == free_action: live.pop(e["addr"], None); total -= e["size"]
        if i in (fwd_end - 1, peak_i): at[i] = (dict(live), total)  # fwd_end - 1: before the marker
    def summary(live_now, total_now):
        rows = [(i, e) for i, e in live_now.values() if not _is_mark(e)]
        by_frame, by_phase = defaultdict(lambda: [0, 0]), defaultdict(int)
        for i, e in rows:
            by_phase[phase(i)] += e["size"]
            a = by_frame[(phase(i), frame_label(e.get("frames", []), phase(i)))]; a[0] += e["size"]; a[1] += 1
        largest = sorted(rows, key=lambda r: -r[1]["size"])[:top]
        return dict(total=total_now, resident_before_step=total_now - sum(by_phase.values()), by_phase=dict(by_phase),
                    by_frame=[dict(phase=k[0], frame=k[1], bytes=v[0], allocations=v[1])
                              for k, v in sorted(by_frame.items(), key=lambda kv: -kv[1][0])[:top]],
                    largest=[dict(bytes=e["size"], phase=phase(i), frame=frame_label(e.get("frames", []), phase(i)))
                             for i, e in largest])
    pe, t0 = trace[peak_i], trace[start].get("time_us")
    return dict(entries=end - start + 1, free_action=free_action, before=before,
                peak=dict(bytes=peak, phase=phase(peak_i), entry=peak_i - start,
                          ms_after_start=None if t0 is None or "time_us" not in pe else (pe["time_us"] - t0) / 1000,
                          frame=frame_label(pe.get("frames", []), phase(peak_i)), **summary(*at[peak_i])),
                forward_end=summary(*at[fwd_end - 1]))


# ---------------------------------------------------------------- 3. tables

def _unit(total):
    return (GiB, "GiB") if total >= GiB else (MiB, "MiB")


def tables(name:str, res:dict, top:int) -> str:
    s = res["saved"]
    div, unit = _unit(s["total_bytes"])
    f = lambda b: f"{b / div:.3f}"
    out = [f"### {name}: saved for the backward, {f(s['total_bytes'])} {unit} in {s['storages']} storages "
           f"({s['saves']} saves; parameters and inputs not counted)", ""]
    out += ["| kind | " + unit + " | storages |", "|---|---|---|"]
    out += [f"| {r['key']} | {f(r['bytes'])} | {r['storages']} |" for r in s["by_kind"]]
    out += ["", "| stage | " + unit + " | storages | points × channels (stage output) | bytes / point |", "|---|---|---|---|---|"]
    for r in s["by_stage"]:
        shape = f"{r['points']:,} × {r['channels']}" if "points" in r else ""
        bpp = f"{r['bytes_per_point']:.0f}" if "points" in r else ""
        out.append(f"| {r['key']} | {f(r['bytes'])} | {r['storages']} | {shape} | {bpp} |")
    out += ["", f"| module role (type) | op | dtype | kind | {unit} | storages | saves |", "|---|---|---|---|---|---|---|"]
    for r in s["by_role"][:top]:
        role, typ, op, dt, kind = r["key"]
        out.append(f"| {role} ({typ}) | `{op}` | {dt} | {kind} | {f(r['bytes'])} | {r['storages']} | {r['saves']} |")
    if len(s["by_role"]) > top: out.append(f"| … {len(s['by_role']) - top} more rows in the JSON | | | | | | |")
    for title, key in (("module type", "by_type"), ("dtype", "by_dtype"), ("op", "by_op")):
        rows = s[key][:12]
        out += ["", f"| {title} | {unit} | storages |", "|---|---|---|"]
        out += [f"| {r['key']} | {f(r['bytes'])} | {r['storages']} |" for r in rows]
    u = s["upcast_copies"]
    out += ["", f"Up-cast copies (float32 saved from a half tensor by a widening cast: the half tensor would give the same "
            f"bits): {f(u['bytes'])} {unit}, of which {f(u['source_saved_bytes'])} {unit} whose half source is saved too."]
    if u["by_role"]:
        out += ["", f"| module role | op | cast from | source saved too | {unit} | storages |", "|---|---|---|---|---|---|"]
        out += [f"| {r['key'][0]} | `{r['key'][1]}` | {r['key'][2]} | {r['key'][3]} | {f(r['bytes'])} | {r['storages']} |"
                for r in u["by_role"][:10]]
    out += ["", f"| exact saving (estimated from the saved tensors; they add up) | {unit} | storages |", "|---|---|---|"]
    out += [f"| {c['what']} | {f(c['bytes'])} | {c['storages']} |" for c in s["candidates"]]
    c = s["ctx_attributes"]
    out += ["", f"Tensors in autograd Functions' attributes (not through save_for_backward): {c['tensors']}, "
            f"{f(c['bytes'])} {unit}; freed during the forward (saved, then released with a discarded graph branch): "
            f"{f(s['freed_in_forward_bytes'])} {unit}."]
    if "cuda" in res:
        c = res["cuda"]
        g = lambda b: f"{b / GiB:.2f}"
        out += ["", f"**CUDA**: before the step {g(c['before'])} GiB; kept by the forward {g(c['kept_by_forward'])} GiB; "
                f"forward peak {g(c['forward_peak'])} GiB; backward peak {g(c['backward_peak'])} GiB; gradients "
                f"{g(c['grads'])} GiB; reserved peak {g(c['reserved_peak'])} GiB."]
        sn = res.get("snapshot", {})
        if "error" in sn: out += ["", f"Snapshot: {sn['error']}"]
        elif sn:
            p = sn["peak"]
            out += ["", f"Snapshot: peak {g(p['bytes'])} GiB in the {p['phase']} (entry {p['entry']} of {sn['entries']}"
                    + (f", {p['ms_after_start']:.1f} ms after the step's start" if p["ms_after_start"] is not None else "")
                    + f", at `{p['frame']}`): resident before the step {g(p['resident_before_step'])} GiB, "
                    + ", ".join(f"allocated in the {k} {g(v)} GiB" for k, v in p["by_phase"].items()) + "."]
            for title, part in (("live at the peak", p), ("live at the end of the forward (kept for the backward)", sn["forward_end"])):
                out += ["", f"| {title}: allocating frame | phase | GiB | allocations |", "|---|---|---|---|"]
                out += [f"| `{r['frame']}` | {r['phase']} | {g(r['bytes'])} | {r['allocations']} |" for r in part["by_frame"][:15]]
            out += ["", "| largest live at the peak: GiB | phase | frame |", "|---|---|---|"]
            out += [f"| {g(r['bytes'])} | {r['phase']} | `{r['frame']}` |" for r in p["largest"][:10]]
    return "\n".join(out)


def summary_table(results:dict) -> str:
    rows = ["| variant | saved GiB (hooks) | up-cast copies GiB | kept GiB (CUDA) | forward peak GiB | backward peak GiB |",
            "|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "skipped" in r or "error" in r: rows.append(f"| {name} | {r.get('skipped') or r.get('error')} | | | | |"); continue
        s, c = r["saved"], r.get("cuda")
        g = lambda b: f"{b / GiB:.3f}"
        rows.append(f"| {name} | {g(s['total_bytes'])} | {g(s['upcast_copies']['bytes'])} | "
                    + (f"{g(c['kept_by_forward'])} | {g(c['forward_peak'])} | {g(c['backward_peak'])} |" if c else "n/a | n/a | n/a |"))
    return "\n".join(rows)


# ---------------------------------------------------------------- main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    batch_arguments(p)
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--top", type=int, default=30, help="rows of the module-role table printed")
    p.add_argument("--cpp-stacks", action="store_true", help="C++ frames in the CUDA trace (names backward ops; slower)")
    p.add_argument("--max-entries", type=int, default=400_000, help="allocation trace entries kept (CUDA)")
    p.add_argument("--no-snapshot", action="store_true", help="CUDA: peaks only, no allocation trace")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown: p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available(): p.error("--device cuda, but torch.cuda.is_available() is False")
    start = time.perf_counter()
    torch.backends.cudnn.benchmark = True
    model, head, data, labels = build(args.device, args.tiny, args.scan, args.copies, args.crop)
    n = len(data["coord"])
    env = dict(device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__, points=n,
               copies=args.copies, crop=args.crop, tiny=args.tiny, scan=Path(args.scan).name,
               amp=str(amp_dtype(args.device)).split(".")[-1], parameters=sum(q.numel() for q in model.parameters()),
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), command=portable_command(sys.argv))
    report = dict(env=env, variants={})
    def save():
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"{env['device']}, torch {env['torch']}, {n:,} points, autocast {env['amp']}, "
          f"{env['parameters'] / 1e6:.1f}M parameters{' (tiny)' if args.tiny else ''}", flush=True)
    for name in names:
        lev = VARIANTS[name]
        if lev.get("fused_ln") and not (cuda and kernels.available()):
            report["variants"][name] = dict(skipped="fused LayerNorm needs Triton on CUDA" + ("" if cuda else ": not on the CPU"))
            print(f"\n### {name}: skipped ({report['variants'][name]['skipped']})", flush=True); save(); continue
        res = dict(levers=lev)
        t = time.perf_counter()
        try:
            apply(model, lev)
            step_fn("ft", model, head, data, labels)()  # warm-up: spconv tunes its kernels, cuDNN picks its own
            sync(args.device)
            res["saved"] = saved_attribution(model, head, data, labels)
            if cuda:
                torch.cuda.empty_cache()
                res["cuda"] = cuda_peaks(model, head, data, labels)
                if not args.no_snapshot:
                    res["snapshot"] = snapshot_step(model, head, data, labels, args.cpp_stacks, args.max_entries)
        except Exception as e:
            import traceback; traceback.print_exc()
            res["error"] = f"{type(e).__name__}: {e}"[:500]
        finally: apply(model, {})
        res["seconds"] = time.perf_counter() - t
        report["variants"][name] = res
        save()
        print("\n" + (tables(name, res, args.top) if "saved" in res else f"### {name}: {res.get('error')}"), flush=True)
    report["seconds"] = time.perf_counter() - start
    save()
    print("\n### Summary\n\n" + summary_table(report["variants"]) + f"\n\n{report['seconds']:.0f} s in all"
          + (f"; {args.json}" if args.json else ""), flush=True)
    return report


if __name__ == "__main__":
    main()
