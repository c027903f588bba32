"bench/gaps.py's trace analysis on a hand-made chrome trace: interval union, gap detection, launch attribution, flags"
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from gaps import align, analyze, attribute_through, find_gaps, host_chains, overlap, qualify, summarize, union

MAIN, BWD, GPU = 100, 101, 7


def X(cat, name, ts, end, tid=MAIN, pid=1, **args):
    return dict(ph="X", cat=cat, name=name, ts=ts, dur=end - ts, pid=pid, tid=tid, args=args)


def kernel(name, ts, end, corr, stream=GPU): return X("kernel", name, ts, end, tid=stream, pid=0, correlation=corr, stream=stream)


def trace(python=True):
    "One step [-5, 1000] µs: a read of the device (tolist + sync), serialization launching two overlapping kernels, a capture, a graph replay, a backward launch"
    py = [X("python_function", "sonata_nb/model.py(800): forward", 0, 900),
          X("python_function", "sonata_nb/model.py(615): plan_pooling", 10, 200),
          X("python_function", "sonata_nb/structure.py(78): read_host_shape", 20, 150),
          X("python_function", "<built-in method tolist of Tensor object at 0x1>", 30, 140),
          X("python_function", "sonata_nb/serialization.py(118): encode_orders", 200, 400),
          X("python_function", "torch/functional.py(10): helper", 295, 310),
          X("python_function", "sonata_nb/model.py(507): _capture", 500, 700),
          X("python_function", "sonata_nb/model.py(530): replay", 745, 765)] if python else []
    return [dict(ph="M", name="process_name", pid=1, tid=0, args=dict(name="python")),
            X("user_annotation", "gaps/step0", -5, 1000),
            *py,
            X("cpu_op", "aten::_local_scalar_dense", 31, 139),
            X("cpu_op", "aten::add", 3, 9),
            X("cuda_runtime", "cudaLaunchKernel", 5, 8, correlation=1), kernel("add_kernel", 10, 40, 1),
            X("cuda_runtime", "cudaMemcpyAsync", 32, 35, correlation=2),
            X("gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", 41, 45, tid=GPU, pid=0, correlation=2),
            X("cuda_runtime", "cudaStreamSynchronize", 36, 138, correlation=3),
            X("cpu_op", "aten::sort", 299, 309),
            X("cuda_runtime", "cudaLaunchKernel", 300, 305, correlation=4), kernel("sort_kernel", 306, 350, 4),
            X("cuda_runtime", "cudaLaunchKernel", 310, 312, correlation=5), kernel("side_kernel", 320, 360, 5, stream=8),
            X("cuda_runtime", "cudaStreamBeginCapture", 510, 512, correlation=6),
            X("cuda_runtime", "cudaLaunchKernel", 520, 522, correlation=7),  # captured: never runs
            X("cuda_runtime", "cudaStreamEndCapture", 600, 610, correlation=8),
            X("cuda_runtime", "cudaGraphInstantiate", 610, 690, correlation=9),
            X("cuda_runtime", "cudaGraphLaunch", 750, 760, correlation=10),
            kernel("graph_k1", 770, 800, 10), kernel("graph_k2", 805, 880, 10),  # 5 µs between them: below the minimum
            X("cpu_op", "autograd::engine::evaluate_function: MmBackward0", 860, 895, tid=BWD),
            X("cuda_runtime", "cudaLaunchKernel", 870, 875, tid=BWD, correlation=11), kernel("mm_backward", 890, 900, 11),
            X("cuda_runtime", "cudaDeviceSynchronize", 905, 995, correlation=12),
            X("gpu_user_annotation", "gaps/step0", -5, 1000, tid=GPU, pid=0)]  # not GPU work


def test_union_and_overlap():
    assert union([(5, 8), (1, 3), (2, 4), (8, 9), (10, 11)]) == [(1, 4), (5, 9), (10, 11)]
    merged = union([(0, 10), (20, 30), (40, 50)])
    assert overlap(5, 45, merged) == 5 + 10 + 5
    assert overlap(10, 20, merged) == 0 and overlap(60, 70, merged) == 0


def test_find_gaps_union_of_streams():
    acts = [dict(ts=0.0, end=10.0, name="a"), dict(ts=5.0, end=30.0, name="b"), dict(ts=12.0, end=20.0, name="c"),
            dict(ts=45.0, end=50.0, name="d"), dict(ts=52.0, end=60.0, name="e")]
    busy, idle, gaps = find_gaps(acts, -20.0, 100.0, min_gap_us=10)
    assert busy == 30 + 5 + 8 and idle == 120 - busy
    assert [(g["start"], g["end"]) for g in gaps] == [(-20, 0), (30, 45), (60, 100)]  # the 2 µs gap 50..52 is left out
    assert gaps[0]["prev"] is None and gaps[0]["next"]["name"] == "a"
    assert gaps[1]["prev"]["name"] == "b" and gaps[1]["next"]["name"] == "d"  # b ends last of the merged a, b, c
    assert gaps[2]["next"] is None
    # activities reaching outside the window are clipped to it
    busy, idle, gaps = find_gaps([dict(ts=-5.0, end=5.0, name="x")], 0.0, 10.0, min_gap_us=1)
    assert busy == 5 and [(g["start"], g["end"]) for g in gaps] == [(5, 10)]


def test_host_chains_nesting():
    evs = sorted([X("python_function", "outer", 0, 100), X("python_function", "inner", 10, 20),
                  X("cpu_op", "op", 12, 18), X("python_function", "later", 30, 40)], key=lambda e: e["ts"])
    for e in evs: e["end"] = e["ts"] + e["dur"]
    chains = host_chains({(1, MAIN): evs}, [(1, MAIN, 15), (1, MAIN, 35), (1, MAIN, 25), (1, MAIN, 200), (1, BWD, 15)])
    assert [[e["name"] for e in c] for c in chains] == [["outer", "inner", "op"], ["outer", "later"], ["outer"], [], []]


def test_analyze_attributes_gaps():
    res = analyze(trace(), min_gap_us=10)
    (st,) = res["steps"]
    assert res["gpu"] and res["python"]
    assert st["wall_us"] == 1005 and st["busy_us"] == 30 + 4 + 54 + 30 + 75 + 10
    assert st["idle_us"] == 1005 - st["busy_us"]
    got = [(g["start"], g["end"]) for g in st["gaps"]]
    assert got == [(-5, 10), (45, 306), (360, 770), (900, 1000)]  # 40..41, 800..805 and 880..890 are not over 10 µs
    start, after_sync, after_capture, end = st["gaps"]
    assert start["edge"] == "start" and start["label"] == "sonata_nb/model.py(800): forward" and start["op"] == "aten::add"
    # the read of the device: the GPU idles until the host launches the sort in encode_orders
    assert after_sync["label"] == "sonata_nb/serialization.py(118): encode_orders" and after_sync["python"] == "torch/functional.py(10): helper"
    assert after_sync["outer"] == "sonata_nb/model.py(800): forward" and after_sync["op"] == "aten::sort"
    assert after_sync["sync_us"] == 140 - 45 and after_sync["capture_us"] == 0 and after_sync["host_late"]
    assert after_sync["kernel"] == "sort_kernel" and after_sync["launch_name"] == "cudaLaunchKernel"
    assert after_sync["mid_inner"] == "sonata_nb/model.py(615): plan_pooling"  # at the gap's middle, 175.5 µs
    # the capture window (the _capture frame, BeginCapture..EndCapture, Instantiate) lies inside the gap
    assert after_capture["label"] == "sonata_nb/model.py(530): replay" and after_capture["capture_us"] == 200
    assert after_capture["launch_name"] == "cudaGraphLaunch" and after_capture["kernel"] == "graph_k1"
    assert end["edge"] == "end" and end["sync_us"] == 90
    assert st["captures"] == 1 and st["capture_host_us"] == 200
    s = summarize(res, top=15, longest=2)
    assert [g["us"] for g in s["longest"]] == [410, 261]
    rows = {r["label"]: r for r in s["by_function"]}
    assert rows["sonata_nb/serialization.py(118): encode_orders"]["idle_ms_per_step"] == pytest.approx(0.261)
    assert s["mean"]["busy_ratio"] == pytest.approx(203 / 1005)
    # idle 802 µs = 15 before the first kernel + 200 in the capture + 95 in the sync + (166 + 210) host late + 100 at the
    # end + 16 in gaps of 10 µs or less
    assert list(s["categories"].values()) == pytest.approx([0.015, 0.2, 0.095, 0.376, 0.0, 0.1, 0.016])


def test_backward_thread_and_gap_threshold():
    res = analyze(trace(), min_gap_us=5)  # now the 10 µs gap before the backward kernel counts, not the 5 µs one
    labels = [g["label"] for g in res["steps"][0]["gaps"]]
    assert "[op] autograd::engine::evaluate_function: MmBackward0" in labels
    assert len(res["steps"][0]["gaps"]) == 5
    (bwd,) = [g for g in res["steps"][0]["gaps"] if g["kernel"] == "mm_backward"]
    assert bwd["host_late"] is False  # launched at 870..875, before the GPU went idle at 880: a device-side wait
    assert summarize(res)["categories"]["queued before the gap: the GPU waited on something else"] == pytest.approx(0.01)


def test_nostack_pass_gets_frames_through_alignment():
    light, stacked = analyze(trace(python=False)), analyze(trace())
    assert not light["python"]
    assert light["steps"][0]["gaps"][1]["label"] == "[op] aten::sort"
    assert attribute_through(light, stacked) == ["identical"]
    g = light["steps"][0]["gaps"][1]
    assert g["label"] == "sonata_nb/serialization.py(118): encode_orders" and g["via"] == "stack pass"
    mapping, how = align(["a", "b", "c", "d"], ["a", "x", "b", "c", "d"])
    assert mapping == {0: 0, 1: 2, 2: 3, 3: 4} and how == "aligned 4 of 4 activities (5 in the other pass)"
    mapping, _ = align(["a", "b", "c", "d", "e"], ["a", "c", "b", "d", "e"], limit=0)  # middle too big: prefix and suffix only
    assert mapping == {0: 0, 3: 3, 4: 4}


def test_cpu_trace_has_no_gpu_work_and_markers_are_required():
    evs = [e for e in trace() if e.get("cat") not in ("kernel", "gpu_memcpy")]
    res = analyze(evs)
    assert not res["gpu"] and res["steps"][0]["busy_us"] == 0
    with pytest.raises(ValueError, match="gaps/step"): analyze([e for e in trace() if e.get("cat") != "user_annotation"])


def test_qualify_adds_the_class(tmp_path):
    (tmp_path / "sonata_nb").mkdir()
    (tmp_path / "sonata_nb" / "m.py").write_text('import torch\n\nclass Block(torch.nn.Module):\n    "doc"\n'
                                               '    @torch.no_grad()\n    def forward(self, x):\n        return x\n\n'
                                               'def top(x):\n    def inner(y): return y\n    return inner(x)\n')
    assert qualify("sonata_nb/m.py(5): forward", tmp_path) == "sonata_nb/m.py(5): Block.forward"  # the decorator's line
    assert qualify("sonata_nb/m.py(9): top", tmp_path) == "sonata_nb/m.py(9): top"
    assert qualify("sonata_nb/m.py(10): inner", tmp_path) == "sonata_nb/m.py(10): inner"  # nested in a function, not a method
    assert qualify("torch/nn/modules/module.py(1): _call_impl", tmp_path) == "torch/nn/modules/module.py(1): _call_impl"
    assert qualify("sonata_nb/gone.py(3): f", tmp_path) == "sonata_nb/gone.py(3): f" and qualify(None) is None


def test_launch_on_another_thread_id_and_missing_launch():
    evs = trace()
    for e in evs:  # the runtime calls on their own thread ids: the enclosing op (External id) or the deepest stack decides
        if e.get("cat") == "cuda_runtime": e["tid"] = 999
    for e in evs:
        if e.get("name") == "aten::sort": e["args"]["External id"] = 42
        if e.get("args", {}).get("correlation") == 4: e["args"]["External id"] = 42
    res = analyze(evs)
    start, after_sync, after_capture, end = res["steps"][0]["gaps"]
    assert after_sync["label"] == "sonata_nb/serialization.py(118): encode_orders" and after_sync["op"] == "aten::sort"
    assert after_capture["label"] == "sonata_nb/model.py(530): replay"  # by the deepest stack at the launch's time
    res = analyze([e for e in trace() if e.get("name") != "cudaGraphLaunch"])
    assert res["steps"][0]["gaps"][2]["label"] == "(launch call not in the trace)"
