"Losses against slow direct implementations (Lovász extension by brute force over sets, CE by hand)."
import itertools, linecache, math
import pytest
import torch
from sonata_nb import losses as L
from sonata_nb.losses import LOSSES, CrossEntropyLoss, LovaszLoss, _present, _sorted_by_error, build_criteria, lovasz_grad, lovasz_softmax


def jaccard_loss(mispredicted: set, fg: set) -> float:
    "Δ_J(M) = 1 - |F \\ M| / |F ∪ M| (0 for an empty union)"
    union = fg | mispredicted
    return 0.0 if not union else 1.0 - len(fg - mispredicted) / len(union)


def lovasz_extension_integral(errors, fg):
    "Lovász extension of Δ_J at errors in [0,1]: ∫_0^1 Δ_J({i : e_i >= t}) dt, integrated piecewise exactly"
    cuts = sorted(set([0.0, 1.0] + list(errors)))
    total = 0.0
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        t = (lo + hi) / 2
        total += (hi - lo) * jaccard_loss({i for i, e in enumerate(errors) if e >= t}, fg)
    return total


def lovasz_extension_sorted(errors, fg):
    "Σ_k e_(k) (Δ({π1..πk}) − Δ({π1..πk−1})) with a plain Python sort"
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    total, prev, chosen = 0.0, 0.0, set()
    for i in order:
        chosen.add(i)
        cur = jaccard_loss(chosen, fg)
        total += errors[i] * (cur - prev)
        prev = cur
    return total


def slow_lovasz_softmax(logits, labels, ignore=-1, class_seen=None):
    probs = torch.softmax(logits.double(), 1).tolist()
    labels = labels.tolist()
    keep = [i for i, l in enumerate(labels) if l != ignore]
    per_class = []
    for c in sorted({labels[i] for i in keep}):
        if class_seen is not None and c not in class_seen:
            continue
        fg = {j for j, i in enumerate(keep) if labels[i] == c}
        errors = [abs((1.0 if labels[i] == c else 0.0) - probs[i][c]) for i in keep]
        a, b = lovasz_extension_integral(errors, fg), lovasz_extension_sorted(errors, fg)
        assert math.isclose(a, b, abs_tol=1e-9)  # the two definitions agree
        per_class.append(a)
    return sum(per_class) / len(per_class) if per_class else 0.0


@pytest.mark.parametrize("seed", range(8))
def test_lovasz_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n, c = int(torch.randint(1, 12, (1,), generator=g)), int(torch.randint(2, 5, (1,), generator=g))
    logits = torch.randn(n, c, generator=g) * 2
    labels = torch.randint(-1, c, (n,), generator=g)
    got = LovaszLoss(mode="multiclass", ignore_index=-1, loss_weight=1.0)(logits, labels)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(slow_lovasz_softmax(logits, labels), abs=1e-5)


def test_lovasz_ties_and_weight_and_class_seen():
    logits = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 0])
    assert LovaszLoss(loss_weight=0.5)(logits, labels).item() == pytest.approx(0.5 * slow_lovasz_softmax(logits, labels), abs=1e-6)
    got = LovaszLoss(class_seen=[0, 2])(logits, labels).item()
    assert got == pytest.approx(slow_lovasz_softmax(logits, labels, class_seen={0, 2}), abs=1e-6)
    assert got != pytest.approx(slow_lovasz_softmax(logits, labels), abs=1e-6)


def test_lovasz_ignore_index_other_value():
    logits, labels = torch.randn(9, 3), torch.tensor([0, 1, 2, 255, 255, 1, 0, 2, 2])
    assert LovaszLoss(ignore_index=255)(logits, labels).item() == pytest.approx(slow_lovasz_softmax(logits, labels, ignore=255), abs=1e-5)


def test_lovasz_gradient_matches_autograd_of_slow_formula():
    torch.manual_seed(0)
    logits = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 2, 2, 1, -1, 0, 2])
    LovaszLoss()(logits, labels).backward()
    # finite differences of the brute-force value (the extension is piecewise linear in the probabilities)
    eps, num = 1e-6, torch.zeros_like(logits)
    for i, j in itertools.product(range(7), range(3)):
        d = torch.zeros_like(logits); d[i, j] = eps
        num[i, j] = (slow_lovasz_softmax(logits.detach() + d, labels) - slow_lovasz_softmax(logits.detach() - d, labels)) / (2 * eps)
    assert torch.allclose(logits.grad, num, atol=1e-5)
    assert logits.grad[4].abs().sum() == 0  # the ignored point gets no gradient


def test_lovasz_all_ignored_is_zero_with_graph():
    x = torch.randn(3, 4, requires_grad=True)
    loss = LovaszLoss()(x, torch.full((3,), -1))
    loss.backward()
    assert loss.item() == 0.0 and x.grad.abs().sum() == 0


def test_lovasz_grad_is_jaccard_increment():
    fg = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    F = {i for i in range(6) if fg[i] == 1}
    expected, prev = [], 0.0
    for k in range(1, 7):
        cur = jaccard_loss(set(range(k)), F)
        expected.append(cur - prev); prev = cur
    assert torch.allclose(lovasz_grad(fg), torch.tensor(expected))


def test_cross_entropy_by_hand():
    torch.manual_seed(1)
    logits, labels = torch.randn(10, 4), torch.tensor([0, 1, 2, 3, -1, 1, 1, -1, 0, 2])
    w = [1.0, 2.0, 0.5, 1.5]
    logp = torch.log_softmax(logits, 1)
    keep = labels != -1
    picked = -logp[keep, labels[keep]]
    wts = torch.tensor(w)[labels[keep]]
    assert CrossEntropyLoss()(logits, labels).item() == pytest.approx(picked.mean().item(), abs=1e-6)
    assert CrossEntropyLoss(weight=w, loss_weight=3.0)(logits, labels).item() == pytest.approx(
        3 * ((picked * wts).sum() / wts.sum()).item(), abs=1e-5)


def test_criteria_sum_and_registry():
    assert {"CrossEntropyLoss", "LovaszLoss"} <= set(LOSSES._items)
    torch.manual_seed(2)
    logits, labels = torch.randn(30, 5), torch.randint(-1, 5, (30,))
    crit = build_criteria([dict(type="CrossEntropyLoss", loss_weight=1.0, ignore_index=-1),
                           dict(type="LovaszLoss", mode="multiclass", loss_weight=1.0, ignore_index=-1)])
    manual = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-1).item() + slow_lovasz_softmax(logits, labels)
    assert crit(logits, labels).item() == pytest.approx(manual, abs=1e-5)
    crit = build_criteria([dict(type="CrossEntropyLoss", weight=[1.0] * 5)])
    assert crit.losses[0].weight.shape == (5,)  # a buffer: moves with .to(device)
    with pytest.raises(KeyError, match="Known"):
        build_criteria([dict(type="DiceLoss")])
    with pytest.raises(ValueError, match="multiclass"):
        LovaszLoss(mode="binary")


def loop_lovasz_softmax(probs, labels, class_seen=None, stable=False):
    "The per-class loop that lovasz_softmax replaced (one sort per class), kept to compare values and gradients"
    losses = []
    for c in labels.unique():
        if class_seen is not None and int(c) not in class_seen:
            continue
        fg = (labels == c).to(probs.dtype)
        errors = (fg - probs[:, c]).abs()
        if stable:
            errors_sorted, perm = torch.sort(errors, dim=0, descending=True, stable=True)
        else:  # the replaced code's call
            errors_sorted, perm = torch.sort(errors, 0, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm]).to(probs.dtype)))
    if not losses:
        return probs.sum() * 0.0
    return sum(losses) / len(losses)


def value_and_grad(f, logits, labels, **kw):
    x = logits.clone().requires_grad_()
    loss = f(x.softmax(1), labels, **kw)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk", [None, 1, 5000])  # None: all classes in one sort; 1 and 5000: one or two per sort
@pytest.mark.parametrize("class_seen", [None, {0, 3, 7, 11}])
def test_lovasz_one_sort_matches_class_loop(dtype, chunk, class_seen):
    g = torch.Generator().manual_seed(3)
    logits, labels = (torch.randn(2500, 13, generator=g) * 3).to(dtype), torch.randint(0, 12, (2500,), generator=g)
    kw = {} if chunk is None else dict(chunk=chunk)
    got, got_grad = value_and_grad(lovasz_softmax, logits, labels, class_seen=class_seen, **kw)
    ref, ref_grad = value_and_grad(loop_lovasz_softmax, logits, labels, class_seen=class_seen)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    assert got.dtype == dtype and abs(got.item() - ref.item()) <= tol * abs(ref.item())
    assert (got_grad - ref_grad).abs().max() <= tol * ref_grad.abs().max()
    assert ref_grad.abs().max() > 0


def test_lovasz_one_sort_with_ties():
    "Equal errors: the same loss as the loop; the same gradient as the loop with a stable sort (ties in point order)"
    g = torch.Generator().manual_seed(4)
    logits = torch.randint(-2, 3, (3000, 6), generator=g).float()  # few distinct probabilities: many equal errors
    labels = torch.randint(0, 6, (3000,), generator=g)
    got, got_grad = value_and_grad(lovasz_softmax, logits, labels)
    for stable in (False, True):
        ref, ref_grad = value_and_grad(loop_lovasz_softmax, logits, labels, stable=stable)
        assert abs(got.item() - ref.item()) <= 1e-6 * ref.item()
    assert (got_grad - ref_grad).abs().max() <= 1e-6 * ref_grad.abs().max()  # the stable loop's


def test_sorted_by_error_orders_floats_as_a_stable_descending_sort():
    e = torch.tensor([[0.0, 1.0, 1e-40, 0.5, float("inf"), 0.5, 3e-8, 0.0], [0.25, 0.25, 0.0, 1.0, 2.0, 1e-45, 0.7, 0.25]])
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = e.to(dtype)
        ref = x.sort(dim=-1, descending=True, stable=True)[1]
        assert torch.equal(_sorted_by_error(x), ref), dtype


def previous_lovasz_loss(logits, labels, ignore_index=-1, class_seen=None, chunk=2**23):
    "LovaszLoss before its hand-written backward (autograd's graph, stable argsort of (class, error) keys), kept to compare"
    probs = logits.softmax(dim=1)
    if ignore_index is not None:
        valid = labels != ignore_index
        probs, labels = probs[valid], labels[valid]
    classes = labels.unique()
    if class_seen is not None:
        classes = classes[torch.tensor([int(c) in class_seen for c in classes.tolist()], dtype=torch.bool, device=classes.device)]
    if not len(classes):
        return probs.sum() * 0.0
    n, losses, dev = len(labels), [], probs.device
    for part in classes.split(max(1, chunk // n)):
        fg = labels[None] == part[:, None]
        errors = (fg.to(probs.dtype) - probs.t()[part]).abs()
        k = len(part)
        if errors.dtype == torch.float64:
            perm = (errors.detach().sort(dim=-1, descending=True, stable=True)[1] + n * torch.arange(k, device=dev)[:, None]).view(-1)
        else:
            bits = errors.detach().float().view(torch.int32).long()
            perm = ((torch.arange(k, device=dev)[:, None] << 32) | (0x7FFFFFFF - bits)).view(-1).argsort(stable=True)
        errors_sorted, fg_sorted = errors.reshape(-1)[perm].view_as(errors), fg.reshape(-1)[perm].view_as(fg)
        losses.append((errors_sorted * lovasz_grad(fg_sorted).to(probs.dtype)).sum(-1))
    return torch.cat(losses).mean()


def bits(t):
    return t.view({torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}[t.dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ignore_index", [-1, None, 255])
@pytest.mark.parametrize("chunk", [2**23, 1, 3000])
@pytest.mark.parametrize("ties", [False, True])
def test_lovasz_bit_identical_to_previous_implementation(dtype, ignore_index, chunk, ties):
    "Value and gradient of the criteria (CE + Lovász) through a linear head: the same bits as autograd's graph before"
    g = torch.Generator().manual_seed(5)
    feat = torch.randn(1500, 16, generator=g, dtype=dtype)
    labels = torch.randint(-1, 12, (1500,), generator=g)
    if ignore_index == 255:
        labels[labels == -1] = 255
    if ignore_index is None:
        labels = labels.clamp(min=0)
    head = torch.nn.Linear(16, 13).to(dtype)
    if ties:  # few distinct logits: many equal errors
        feat = feat.round()
        with torch.no_grad(): head.weight.copy_(head.weight.round()); head.bias.zero_()
    ce = CrossEntropyLoss(ignore_index=-1 if ignore_index is None else ignore_index)
    results = []
    for new in (True, False):
        head.zero_grad(set_to_none=True)
        x = head(feat)
        lov = (lovasz_softmax(x.softmax(1), labels, chunk=chunk, valid=None if ignore_index is None else labels != ignore_index)
               if new else previous_lovasz_loss(x, labels, ignore_index, chunk=chunk))
        loss = ce(x, labels) + lov
        loss.backward()
        results.append([loss.detach(), head.weight.grad, head.bias.grad])
    for a, b in zip(*results):
        assert torch.equal(bits(a), bits(b))
    assert results[0][1].abs().max() > 0


@pytest.mark.parametrize("class_seen", [None, {0, 3, 7, 11}, {50}])
def test_lovasz_loss_bit_identical_to_previous_with_class_seen_and_all_ignored(class_seen):
    g = torch.Generator().manual_seed(6)
    logits, labels = torch.randn(800, 12, generator=g) * 3, torch.randint(-1, 12, (800,), generator=g)
    for lab in (labels, torch.full_like(labels, -1)):
        out = []
        for f in (lambda x: LovaszLoss(class_seen=class_seen)(x, lab), lambda x: previous_lovasz_loss(x, lab, class_seen=class_seen)):
            x = logits.clone().requires_grad_()
            loss = f(x)
            loss.backward()
            out.append((loss.detach(), x.grad))
        assert torch.equal(bits(out[0][0]), bits(out[1][0])) and torch.equal(bits(out[0][1]), bits(out[1][1]))


def test_lovasz_under_torch_func_uses_the_graph():
    "torch.func.grad runs (the autograd graph, no ctx-style Function) and gives the same gradient"
    g = torch.Generator().manual_seed(7)
    logits, labels = torch.randn(300, 6, generator=g), torch.randint(-1, 6, (300,), generator=g)
    got = torch.func.grad(lambda x: LovaszLoss()(x, labels))(logits)
    x = logits.clone().requires_grad_()
    previous_lovasz_loss(x, labels).backward()
    assert torch.equal(got, x.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sorted_by_error_distinct_keys_match_the_stable_argsort(dtype):
    g = torch.Generator().manual_seed(8)
    for e in (torch.rand(9, 1000, generator=g), torch.randint(0, 5, (9, 1000), generator=g).float() / 4,
              torch.tensor([[0.0, float("inf"), 1e-45, 3e-8, 0.0, 2.0]])):
        e = e.to(dtype)
        assert torch.equal(_sorted_by_error(e), _sorted_by_error(e, distinct=False))


def test_present_is_unique():
    for labels in (torch.tensor([3, 0, 3, 7]), torch.tensor([5, -1, 2]), torch.tensor([1, 25]), torch.tensor([], dtype=torch.long),
                   torch.randint(0, 20, (1000,))):
        assert torch.equal(_present(labels, 20), labels.unique())


# --- the read-free path (the default on CUDA): all points and all classes, invalid points sorted last, presence by counts

def assert_close(got, ref, dtype):
    "(value, gradient) pairs within 1e-6 (float32) or 1e-13 (float64), relative to the value and to the largest gradient"
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    (v, g), (v0, g0) = got, ref
    assert v.dtype == v0.dtype == dtype and abs(v.item() - v0.item()) <= tol * abs(v0.item()), (v.item(), v0.item())
    assert (g - g0).abs().max() <= tol * g0.abs().max(), ((g - g0).abs().max(), g0.abs().max())


def some_classes_absent(labels, absent=(4, 5, 9)):
    "The labels with the classes `absent` moved to class 0"
    labels = labels.clone()
    for c in absent:
        labels[labels == c] = 0
    return labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ignore_index", [-1, None, 255])
@pytest.mark.parametrize("chunk", [2**23, 1, 3000])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("class_seen", [None, {0, 3, 4, 7, 11}, {2, 5, 13, 40}])  # 4, 5: absent; 13 = C, 40: no class
def test_lovasz_read_free_matches_previous_implementation(dtype, ignore_index, chunk, ties, class_seen):
    "Value and gradient of the read-free path (all points and classes) against autograd's graph of the previous implementation"
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(1500, 13, generator=g, dtype=dtype) * 3
    labels = some_classes_absent(torch.randint(-1, 12, (1500,), generator=g))
    if ties:  # few distinct logits: many equal errors, and zero errors among the ignored points' keys
        logits = torch.randint(-2, 3, (1500, 13), generator=g).to(dtype) * 20
    if ignore_index == 255:
        labels[labels == -1] = 255
    if ignore_index is None:
        labels = labels.clamp(min=0)
    valid = None if ignore_index is None else labels != ignore_index
    out = []
    for f in (lambda x: lovasz_softmax(x.softmax(1), labels, class_seen, chunk=chunk, valid=valid, read_free=True),
              lambda x: previous_lovasz_loss(x, labels, ignore_index, class_seen=class_seen, chunk=chunk)):
        x = logits.clone().requires_grad_()
        loss = f(x)
        loss.backward()
        out.append((loss.detach(), x.grad))
    assert_close(*out, dtype)
    assert out[1][1].abs().max() > 0
    if ignore_index is not None:
        assert out[0][1][~valid].abs().max() == 0  # the ignored points: no gradient


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk", [None, 1, 3000])
@pytest.mark.parametrize("class_seen", [None, {0, 3, 4, 7, 11}, {2, 5, 13, 40}])
def test_lovasz_read_free_matches_class_loop(dtype, chunk, class_seen):
    "No ignored point: the read-free path against the per-class loop, classes 4, 5, 9 and 12 absent from the labels"
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(2500, 13, generator=g) * 3).to(dtype)
    labels = some_classes_absent(torch.randint(0, 12, (2500,), generator=g))
    kw = {} if chunk is None else dict(chunk=chunk)
    got = value_and_grad(lovasz_softmax, logits, labels, class_seen=class_seen, read_free=True, **kw)
    assert_close(got, value_and_grad(loop_lovasz_softmax, logits, labels, class_seen=class_seen), dtype)
    assert_close(got, value_and_grad(lovasz_softmax, logits, labels, class_seen=class_seen, read_free=False, **kw), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ignore_index", [0, 3])
def test_lovasz_read_free_ignoring_a_real_class_and_any_valid_mask(dtype, ignore_index):
    "The ignored label is a class (its points must not count for it either), then a random mask: read-free = the path that reads"
    g = torch.Generator().manual_seed(11)
    logits, labels = torch.randn(900, 5, generator=g, dtype=dtype) * 3, torch.randint(0, 5, (900,), generator=g)
    def both(**kw):
        return [value_and_grad(lambda p, y: lovasz_softmax(p, y, read_free=rf, **kw), logits, labels) for rf in (True, False)]
    assert_close(*both(valid=labels != ignore_index), dtype)
    got, ref = both(valid=torch.rand(900, generator=g) < 0.7)
    assert_close(got, ref, dtype)
    loss = LovaszLoss(ignore_index=ignore_index, read_free=True)(logits, labels)
    assert abs(loss.item() - LovaszLoss(ignore_index=ignore_index, read_free=False)(logits, labels).item()) <= 1e-6 * loss.item()


def test_lovasz_read_free_absent_class_with_a_non_finite_probability_does_not_count():
    "An absent class's column holds NaN / inf at a valid point (only `lovasz_softmax` called directly): ignored, as when reading"
    g = torch.Generator().manual_seed(12)
    probs, labels = torch.rand(400, 6, generator=g), torch.randint(0, 5, (400,), generator=g)  # class 5 absent
    for bad in (float("nan"), float("inf")):
        p = probs.clone(); p[100, 5] = bad
        got, ref = lovasz_softmax(p, labels, read_free=True), lovasz_softmax(p, labels, read_free=False)
        assert torch.isfinite(ref) and abs(got.item() - ref.item()) <= 1e-6 * ref.item()


def test_lovasz_read_free_with_ties_matches_the_stable_loop():
    g = torch.Generator().manual_seed(4)
    logits = torch.randint(-2, 3, (3000, 6), generator=g).float()
    labels = torch.randint(0, 6, (3000,), generator=g)
    got = value_and_grad(lovasz_softmax, logits, labels, read_free=True)
    assert_close(got, value_and_grad(loop_lovasz_softmax, logits, labels, stable=True), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lovasz_read_free_when_nothing_counts_is_zero_with_graph(dtype):
    "All points ignored, no seen class present, no seen class below C, no point: exactly 0, a graph, a zero gradient"
    g = torch.Generator().manual_seed(11)
    logits, labels = torch.randn(500, 6, generator=g, dtype=dtype), torch.randint(0, 3, (500,), generator=g)
    cases = [(torch.full_like(labels, -1), -1, None), (torch.full_like(labels, 255), 255, None), (labels, -1, {4, 5}),
             (labels, None, {4, 5}), (labels, -1, {6, 70}), (labels, -1, set()), (labels[:0], -1, None), (labels[:0], None, None)]
    for lab, ignore_index, class_seen in cases:
        x = logits[:len(lab)].clone().requires_grad_()
        loss = LovaszLoss(class_seen=class_seen, ignore_index=ignore_index, read_free=True)(x, lab)
        assert loss.requires_grad and loss.dtype == dtype
        assert torch.equal(bits(loss.detach()), bits(torch.zeros((), dtype=dtype)))  # +0
        loss.backward()
        assert x.grad.shape == x.shape and (not len(lab) or x.grad.abs().max() == 0)


@pytest.mark.parametrize("read_free", [False, True])
def test_lovasz_nan_of_a_valid_point_propagates_and_of_an_ignored_point_does_not(read_free):
    g = torch.Generator().manual_seed(12)
    logits, labels = torch.randn(200, 5, generator=g), torch.randint(-1, 5, (200,), generator=g)
    i_valid, i_ignored = int((labels >= 0).nonzero()[0]), int((labels < 0).nonzero()[0])
    clean = LovaszLoss(read_free=read_free)(logits, labels)
    for i, class_seen in itertools.product((i_valid, i_ignored), (None, {1, 3}, {1, 30}, {30})):
        x = logits.clone()
        x[i, 2] = float("nan")
        x.requires_grad_()
        loss = LovaszLoss(read_free=read_free, class_seen=class_seen)(x, labels)
        loss.backward()
        if i == i_valid:  # NaN, as before (also where no class counts: the previous path's `probs[valid].sum() * 0`)
            assert loss.isnan() and x.grad[i].isnan().all()
        else:  # the ignored point's own row only: softmax's backward of a NaN row
            assert not loss.isnan() and not x.grad[torch.arange(200) != i].isnan().any()
        if i == i_ignored and class_seen is None:
            assert loss == clean


def test_lovasz_labels_outside_the_classes_are_an_error():
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 3, -1, 2])
    with pytest.raises(RuntimeError, match="not a class 0..2"):  # torch._assert_async: on CUDA, at a later kernel launch
        LovaszLoss(read_free=True)(logits, labels)
    with pytest.raises(ValueError, match=r"labels \[3\], not classes 0..2"):
        LovaszLoss(read_free=False)(logits, labels)
    with pytest.raises(RuntimeError, match="not a class 0..2"):
        LovaszLoss(read_free=True, ignore_index=None)(logits, labels.clamp(min=0))
    LovaszLoss(read_free=True, ignore_index=3)(logits, labels.clamp(min=0))  # 3 ignored: no error


def test_lovasz_read_free_reads_no_device_value():
    "Forward and backward on the meta device (which holds no values: a read or a data-dependent shape raises), and the reads counted on the CPU"
    from test_model import HostReads
    g = torch.Generator().manual_seed(13)
    logits, labels = torch.randn(700, 9, generator=g), torch.randint(-1, 9, (700,), generator=g)
    for dtype, class_seen, ignore_index in itertools.product((torch.float32, torch.float64), (None, {1, 4, 20}), (-1, None)):
        lab = labels if ignore_index is not None else labels.clamp(min=0)
        x = logits.to("meta", dtype).requires_grad_()
        loss = LovaszLoss(class_seen=class_seen, ignore_index=ignore_index, read_free=True)(x, lab.to("meta"))
        loss.backward()
        assert loss.shape == () and x.grad.shape == x.shape
        with pytest.raises((NotImplementedError, RuntimeError), match="meta"):  # the previous path reads
            LovaszLoss(class_seen=class_seen, ignore_index=ignore_index, read_free=False)(x, lab.to("meta"))
        # counted on the CPU too (class_seen's index is host-made there; on CUDA a copy from pinned memory, no wait)
        for read_free in (True, False) if class_seen is None else ():
            x = logits.to(dtype).clone().requires_grad_()
            with HostReads() as reads:
                LovaszLoss(class_seen=class_seen, ignore_index=ignore_index, read_free=read_free)(x, lab).backward()
            others = [s for s in reads.sites if "np.sort" not in linecache.getline(L.__file__, int(s.split(":")[1]))]
            assert not others if read_free else others, reads.sites  # only numpy's sort, which the CPU alone takes


def test_lovasz_read_free_under_torch_func_uses_the_graph():
    g = torch.Generator().manual_seed(7)
    logits, labels = torch.randn(300, 6, generator=g), torch.randint(-1, 6, (300,), generator=g)
    for class_seen in (None, {1, 2, 9}):
        got = torch.func.grad(lambda x: LovaszLoss(read_free=True, class_seen=class_seen)(x, labels))(logits)
        x = logits.clone().requires_grad_()
        LovaszLoss(read_free=True, class_seen=class_seen)(x, labels).backward()
        assert torch.equal(got, x.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sorted_by_error_puts_last_points_at_the_end(dtype):
    "The `last` points after all others (in point order), the others as a stable descending sort: distinct keys, stable argsort"
    g = torch.Generator().manual_seed(14)
    for e in (torch.rand(9, 1000, generator=g), torch.randint(0, 3, (9, 1000), generator=g).float() / 2,
              torch.tensor([[0.0, float("inf"), 1e-45, 3e-8, 0.0, 2.0, 0.0]])):
        e = e.to(dtype)
        last = torch.rand(e.shape[1], generator=g) < 0.3
        ref = e.double().masked_fill(last, -1.0).sort(dim=-1, descending=True, stable=True)[1]
        assert torch.equal(_sorted_by_error(e, last=last), ref)
        assert torch.equal(_sorted_by_error(e, distinct=False, last=last), ref)
        with pytest.MonkeyPatch.context() as mp:  # the one flat sort of the GPU (the row in the high bits), not numpy's
            mp.setattr(torch._C, "_are_functorch_transforms_active", lambda: True)
            assert torch.equal(_sorted_by_error(e, last=last), ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("class_seen", [None, {0, 3, 7, 11, 25}])
def test_lovasz_on_cuda_matches_previous(dtype, class_seen):
    "On the GPU: the default (read-free) path within 1e-6 / 1e-13 of the previous implementation, read_free=False its bits"
    g = torch.Generator().manual_seed(9)
    logits = (torch.randn(60000, 20, generator=g, dtype=dtype) * 3).cuda()
    labels = torch.randint(-1, 20, (60000,), generator=g)
    labels[labels == 13] = 14  # an absent class
    labels = labels.cuda()
    out = []
    for f in (lambda x: LovaszLoss(class_seen=class_seen)(x, labels), lambda x: LovaszLoss(class_seen=class_seen, read_free=False)(x, labels),
              lambda x: previous_lovasz_loss(x, labels, class_seen=class_seen)):
        x = logits.clone().requires_grad_()
        loss = f(x)
        loss.backward()
        out.append((loss.detach(), x.grad))
    assert torch.equal(bits(out[1][0]), bits(out[2][0])) and torch.equal(bits(out[1][1]), bits(out[2][1]))
    assert_close(out[0], out[2], dtype)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("ignore_index", [-1, None])
@pytest.mark.parametrize("class_seen", [None, {0, 3, 7, 11, 25}])
def test_lovasz_on_cuda_does_not_synchronize(ignore_index, class_seen):
    "Forward and backward of the default CUDA path under `set_sync_debug_mode('error')`: no host read, no blocking copy"
    g = torch.Generator().manual_seed(10)
    labels = torch.randint(-1 if ignore_index is not None else 0, 20, (50000,), generator=g).cuda()
    x = (torch.randn(50000, 20, generator=g) * 3).cuda().requires_grad_()
    loss_fn = LovaszLoss(ignore_index=ignore_index, class_seen=class_seen)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = loss_fn(x, labels)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ref = x.detach().clone().requires_grad_()
    prev = previous_lovasz_loss(ref, labels, ignore_index, class_seen=class_seen)
    prev.backward()
    assert_close((loss.detach(), x.grad), (prev.detach(), ref.grad), torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lovasz_on_cuda_reads_for_many_classes_by_default():
    "Past LOVASZ_READ_FREE_CLASSES (ScanNet200's 200) the default reads the present classes instead of sorting all of them"
    from sonata_nb.losses import LOVASZ_READ_FREE_CLASSES
    g = torch.Generator().manual_seed(13)
    c = LOVASZ_READ_FREE_CLASSES + 1
    x, labels = torch.randn(5000, c, generator=g).cuda(), torch.randint(0, 8, (5000,), generator=g).cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"): LovaszLoss()(x, labels)
        LovaszLoss(read_free=True)(x, labels)
        LovaszLoss(class_seen=list(range(8)))(x, labels)  # 8 classes to sort: read-free by default
    finally:
        torch.cuda.set_sync_debug_mode("default")
