"Metrics against direct per-class counting; distributed gathering with 2 gloo ranks."
import os, socket
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sonata_nb.metrics import SegMetrics, intersection_and_union, summarize


def slow_counts(pred, target, k, ignore):
    inter, union, tgt = [], [], []
    for c in range(k):
        valid = [(p, t) for p, t in zip(pred.tolist(), target.tolist()) if t != ignore]
        inter.append(sum(1 for p, t in valid if p == c and t == c))
        tgt.append(sum(1 for p, t in valid if t == c))
        union.append(sum(1 for p, t in valid if p == c or t == c))
    return inter, union, tgt


def reference_histogram_counts(pred, target, k, ignore):
    "The reference's numpy formulation (mask, then np.histogram with K bins)"
    out = pred.reshape(-1).copy()
    target = target.reshape(-1)
    out[target == ignore] = ignore
    inter = out[out == target]
    a, _ = np.histogram(inter, bins=np.arange(k + 1))
    b, _ = np.histogram(out, bins=np.arange(k + 1))
    c, _ = np.histogram(target, bins=np.arange(k + 1))
    return a, b + c - a, c


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ignore", [-1, 255])
def test_counts_numpy_and_torch(seed, ignore):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 8))
    pred = rng.integers(0, k, 200)
    target = rng.integers(0, k, 200)
    target[rng.random(200) < 0.2] = ignore
    expected = slow_counts(pred, target, k, ignore)
    for got in (intersection_and_union(pred, target, k, ignore),
                intersection_and_union(torch.from_numpy(pred), torch.from_numpy(target), k, ignore)):
        assert [list(map(int, x)) for x in got] == [list(x) for x in expected]
    ref = reference_histogram_counts(pred, target, k, ignore)
    assert [list(map(int, x)) for x in ref] == [list(x) for x in expected]


def test_inputs_not_modified_and_2d():
    pred, target = torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, -1], [1, 0]])
    before = pred.clone()
    i, u, t = intersection_and_union(pred, target, 2)
    assert torch.equal(pred, before)
    assert (i.tolist(), u.tolist(), t.tolist()) == ([1, 1], [2, 2], [2, 1])


def test_summary_means_over_all_classes():
    r = summarize([5, 0, 0], [10, 0, 4], [6, 0, 2])
    assert r["iou"].tolist() == pytest.approx([0.5, 0.0, 0.0])
    assert r["mIoU"] == pytest.approx(0.5 / 3)  # absent class 1 counts as 0
    assert r["mAcc"] == pytest.approx((5 / 6) / 3)
    assert r["allAcc"] == pytest.approx(5 / 8)


def test_accumulation_equals_concatenation():
    rng = np.random.default_rng(0)
    m = SegMetrics(4)
    preds, targets = [], []
    for s in range(6):
        n = int(rng.integers(1, 50))
        p, t = rng.integers(0, 4, n), rng.integers(-1, 4, n)
        m.add(p, t)  # unnamed scenes all count
        preds.append(p); targets.append(t)
    whole = summarize(*intersection_and_union(np.concatenate(preds), np.concatenate(targets), 4))
    got = m.compute()
    assert got["mIoU"] == pytest.approx(whole["mIoU"]) and got["allAcc"] == pytest.approx(whole["allAcc"])
    assert np.allclose(got["iou"], whole["iou"]) and np.allclose(got["acc"], whole["acc"])
    m.reset()
    assert m.compute()["mIoU"] == 0.0


def test_named_scene_replaces_itself():
    m = SegMetrics(2)
    m.add(np.array([0, 0]), np.array([1, 1]), name="s")
    m.add(np.array([1, 1]), np.array([1, 1]), name="s")
    assert m.compute()["mIoU"] == pytest.approx(0.5)


def test_table():
    m = SegMetrics(3, names=["wall", "floor", "refridgerator"])
    m.add(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]))
    text = m.table()
    lines = text.splitlines()
    assert len(lines) == 5 and "refridgerator" in lines[3] and lines[-1].startswith("mIoU/mAcc/allAcc 0.6667/0.8333/0.7500")
    with pytest.raises(ValueError, match="2 class names"):
        SegMetrics(3, names=["a", "b"])


def _worker(rank, world, port, q):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    m = SegMetrics(3)
    # scene "shared" is seen by both ranks (sampler padding): counted once
    m.add(np.array([0, 1, 2]), np.array([0, 1, 1]), name="shared")
    m.add(np.array([rank, rank]), np.array([rank, 2]), name=f"own{rank}")
    q.put((rank, m.compute()["intersection"].tolist(), m.compute()["union"].tolist(), m.compute(sync=False)["target"].tolist()))
    dist.destroy_process_group()


def test_distributed_gather_two_ranks():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, q)) for r in range(2)]
    for p in procs: p.start()
    out = sorted(q.get(timeout=120) for _ in procs)
    for p in procs: p.join(timeout=60)
    shared = slow_counts(np.array([0, 1, 2]), np.array([0, 1, 1]), 3, -1)
    own = [slow_counts(np.array([r, r]), np.array([r, 2]), 3, -1) for r in range(2)]
    inter = [shared[0][c] + own[0][0][c] + own[1][0][c] for c in range(3)]
    union = [shared[1][c] + own[0][1][c] + own[1][1][c] for c in range(3)]
    for rank, i, u, local_t in out:
        assert i == inter and u == union
        assert local_t == [shared[2][c] + own[rank][2][c] for c in range(3)]  # sync=False: this rank only
