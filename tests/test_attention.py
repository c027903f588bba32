"SerializedAttention against a literal per-sample / per-patch oracle of the reference rule, on every backend."
import pytest
import torch
from sonata_nb import attention as A
from sonata_nb.attention import SerializedAttention, patch_layout, set_attention_backend
from sonata_nb.structure import Point

CPU_BACKENDS = ["sdpa", "math", "auto"]


@pytest.fixture(autouse=True)
def restore_backend():
    yield
    set_attention_backend("sdpa")


def reference_layout(sizes, K):
    "The reference's get_padding_and_inverse, transcribed as a plain Python loop over samples"
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    pad, unpad, cu, pos = [], [], [], 0
    for n, s in zip(sizes, starts):
        n_pad = -(-n // K) * K if n > K else n
        slots = list(range(s, s + n)) + [None] * (n_pad - n)
        if n_pad != n:  # the last n_pad-n slots copy the slots K earlier
            for j in range(n, n_pad): slots[j] = slots[j - K]
        unpad += [pos + j for j in range(n)]
        pad += slots
        cu += list(range(pos, pos + n_pad, K))
        pos += n_pad
    return pad, unpad, cu + [pos]


def oracle(attn, point, K):
    "Loop over samples and patches in float64; patch p = points [pK, pK+K) or, if last, the last K points"
    H, C = attn.num_heads, attn.channels
    order = point.serialized_order[attn.order_index]
    qkv = attn.qkv(point.feat)[order].double().unflatten(-1, (3, H, C // H))
    out = torch.zeros(len(order), C, dtype=torch.double)
    start = 0
    for end in point.offset.tolist():
        for s in range(start, end, K):
            lo = max(min(s, end - K), start)
            q, k, v = qkv[lo:min(lo + K, end)].permute(1, 2, 0, 3)  # (H, L, d)
            o = ((q @ k.transpose(-1, -2)) * attn.scale).softmax(-1) @ v
            out[s:min(s + K, end)] = o.transpose(0, 1).reshape(-1, C)[s - lo:]
        start = end
    return attn.proj(out[point.serialized_inverse[attn.order_index]].float())


def make_point(sizes, C=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    N = sum(sizes)
    point = Point(grid_coord=torch.randint(0, 16, (N, 3), generator=g), feat=torch.randn(N, C, generator=g),
                  offset=torch.tensor(sizes).cumsum(0))
    point.serialization(order=("z", "z-trans", "hilbert", "hilbert-trans"))
    return point


SIZES = {"smaller": [5], "equal": [8], "K+1": [9], "2K+3": [19], "multiple": [24],
         "mixed": [3, 20, 8, 1, 17, 7, 9], "one_point": [1, 1]}


@pytest.mark.parametrize("case", SIZES)
@pytest.mark.parametrize("K", [8, 1024])
def test_layout_matches_reference(case, K):
    sizes = SIZES[case] if K == 8 else [s * 128 for s in SIZES[case]]  # same n/K ratios at K = 1024
    lay = patch_layout(torch.tensor(sizes).cumsum(0), K)
    pad, unpad, cu = reference_layout(sizes, K)
    assert lay.pad.tolist() == pad and lay.unpad.tolist() == unpad and lay.cu_seqlens.tolist() == cu
    assert lay.cu_seqlens.dtype == torch.int32
    # every serialized position is read from a slot holding itself
    rows = torch.cat([lay.full_index.reshape(-1), lay.short_index.reshape(-1)])
    assert torch.equal(rows[lay.out_index], torch.arange(sum(sizes)))


def reference_patches(sizes, K):
    "Full patches (rows of K serialized positions), short patches (padded to the longest by repeating the last) and their lengths"
    pad, _, cu = reference_layout(sizes, K)
    full, short = [], []
    for a, b in zip(cu[:-1], cu[1:]):
        (full if b - a == K else short).append(pad[a:b])
    L = max(map(len, short), default=0)
    return full, [p + [p[-1]] * (L - len(p)) for p in short], [len(p) for p in short]


@pytest.mark.parametrize("seed", range(40))
def test_layout_patches_match_a_plain_loop(seed):
    "full_index, short_index, short_mask and out_index of random batches (empty, short, exact, padded samples), host sizes or not"
    g = torch.Generator().manual_seed(seed)
    K = [1, 2, 3, 8, 16][seed % 5]
    choices = [0, 1, K - 1, K, K + 1, 2 * K, 3 * K - 1, int(torch.randint(0, 5 * K + 1, (1,), generator=g))]
    sizes = [choices[int(i)] for i in torch.randint(0, len(choices), (1 + seed % 6,), generator=g)]
    full, short, lengths = reference_patches(sizes, K)
    for counts in (None, tuple(sizes)):
        lay = patch_layout(torch.tensor(sizes).cumsum(0), K, counts)
        assert lay.full_index.tolist() == full and lay.short_index.tolist() == short
        if len(set(lengths)) > 1: assert lay.short_mask.tolist() == [[j < n for j in range(len(short[0]))] for n in lengths]
        elif lengths: assert lay.short_mask is None
        else: assert lay.short_mask is None or lay.short_mask.numel() == 0  # no short patch: nothing to mask
        rows = torch.cat([lay.full_index.reshape(-1), lay.short_index.reshape(-1)])
        assert torch.equal(rows[lay.out_index], torch.arange(sum(sizes)))
        first = {}  # each position's output row is the first slot holding it
        for r, q in enumerate(rows.tolist()): first.setdefault(q, r)
        assert lay.out_index.tolist() == [first[q] for q in range(sum(sizes))]
        pad, unpad, cu = reference_layout(sizes, K)
        assert lay.pad.tolist() == pad and lay.unpad.tolist() == unpad and lay.cu_seqlens.tolist() == cu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_layout_equals_the_cpu_layout():
    "On CUDA the host-made values travel by an asynchronous pinned copy: the same maps, also when the GPU is busy"
    g = torch.Generator().manual_seed(1)
    for K in (3, 1024):
        sizes = [int(n) for n in torch.randint(0, 4 * K, (7,), generator=g)]
        off = torch.tensor(sizes).cumsum(0)
        busy = torch.randn(4096, 4096, device="cuda")
        for _ in range(5): busy = busy @ busy  # queued work the copy must not wait for, nor race with
        for counts in (None, tuple(sizes)):
            a, b = patch_layout(off, K, counts), patch_layout(off.cuda(), K, counts)
            for x, y in zip(a, b): assert x == y if isinstance(x, int) or x is None else torch.equal(x, y.cpu())


def test_layout_of_an_empty_batch():
    lay = patch_layout(torch.zeros(0, dtype=torch.long), 4, ())
    assert lay.pad.numel() == lay.out_index.numel() == lay.full_index.numel() == 0 and lay.cu_seqlens.tolist() == [0]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", SIZES)
@pytest.mark.parametrize("order_index", [0, 2])
def test_matches_oracle(backend, case, order_index):
    set_attention_backend(backend)
    point = make_point(SIZES[case])
    attn = SerializedAttention(16, 4, patch_size=8, order_index=order_index,
                               upcast_attention=False, upcast_softmax=False).eval()
    expected = oracle(attn, Point(point), 8)
    torch.testing.assert_close(attn(Point(point)).feat, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", ["mixed", "2K+3", "equal"])
def test_non_flash_rule(backend, case):
    "enable_flash=False: K = min(smallest sample, patch_size), all patches full"
    set_attention_backend(backend)
    point = make_point(SIZES[case])
    attn = SerializedAttention(16, 2, patch_size=8, order_index=3, enable_flash=False).eval()
    K = min(min(SIZES[case]), 8)
    torch.testing.assert_close(attn(Point(point)).feat, oracle(attn, Point(point), K), atol=1e-5, rtol=1e-5)


def test_layout_cached_and_shared():
    point = make_point(SIZES["mixed"])
    a1, a2 = SerializedAttention(16, 4, 8, order_index=0), SerializedAttention(16, 4, 8, order_index=1)
    a3 = SerializedAttention(16, 4, 4)
    a1(point); layout = point.patch_layout_8
    a2(point)
    assert point.patch_layout_8 is layout
    a3(point)
    assert point.patch_layout_4.patch_size == 4 and point.patch_layout_8 is layout


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_gradients_flow_and_agree(backend):
    grads = {}
    for name in ("math", backend):
        set_attention_backend(name)
        torch.manual_seed(0)
        attn = SerializedAttention(16, 4, 8, upcast_attention=False, upcast_softmax=False)
        point = make_point(SIZES["mixed"])
        point.feat.requires_grad_(True)
        attn(point).feat.square().sum().backward()
        grads[name] = (attn.qkv.weight.grad.clone(), attn.proj.weight.grad.clone())
        assert grads[name][0].abs().sum() > 0
    for a, b in zip(grads["math"], grads[backend]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_input_gradient():
    point = make_point(SIZES["mixed"])
    feat = point.feat.clone().requires_grad_(True)
    point.feat = feat
    SerializedAttention(16, 4, 8)(point).feat.sum().backward()
    assert feat.grad is not None and feat.grad.abs().sum(1).gt(0).all()


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_dropout_only_in_training(backend):
    set_attention_backend(backend)
    point = make_point(SIZES["mixed"])
    attn = SerializedAttention(16, 4, 8, attn_drop=0.5)
    torch.manual_seed(0); train_out = attn.train()(Point(point)).feat
    eval_out = attn.eval()(Point(point)).feat
    no_drop = SerializedAttention(16, 4, 8, attn_drop=0.0).eval()
    no_drop.load_state_dict(attn.state_dict())
    assert torch.equal(eval_out, no_drop(Point(point)).feat)
    assert not torch.allclose(train_out, eval_out)


def test_upcast_computes_in_float32():
    point = make_point(SIZES["mixed"])
    attn = SerializedAttention(16, 4, 8, upcast_attention=True, upcast_softmax=True).eval()
    expected = attn(Point(point)).feat
    low = Point(point); low.feat = point.feat.bfloat16()
    out = attn.to(torch.bfloat16)(low).feat
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.1)


def test_errors():
    with pytest.raises(ValueError, match="enable_rpe=True is not supported"):
        SerializedAttention(16, 4, 8, enable_rpe=True)
    with pytest.raises(ValueError, match="divisible"):
        SerializedAttention(16, 3, 8)
    with pytest.raises(ValueError, match="Unknown attention backend"):
        set_attention_backend("xformers")
    if A.flash_attn is None:
        with pytest.raises(ImportError, match="flash_attn"):
            set_attention_backend("flash")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["sdpa", "math"] + (["flash"] if A.flash_attn is not None else []))
def test_cuda_backends(backend):
    set_attention_backend(backend)
    point = make_point(SIZES["mixed"])
    attn = SerializedAttention(16, 4, 8, upcast_attention=False, upcast_softmax=False).eval()
    expected = oracle(attn, Point(point), 8)
    gpu = Point({k: v.cuda() if torch.is_tensor(v) else v for k, v in point.items()})
    out = attn.cuda()(gpu).feat.cpu()
    tol = 2e-2 if backend == "flash" else 1e-4  # flash computes in bf16
    torch.testing.assert_close(out, expected, atol=tol, rtol=tol)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("upcast", [False, True])
def test_cuda_autocast(upcast):
    point = make_point(SIZES["mixed"])
    attn = SerializedAttention(16, 4, 8, upcast_attention=upcast, upcast_softmax=upcast).eval()
    expected = oracle(attn, Point(point), 8)
    gpu = Point({k: v.cuda() if torch.is_tensor(v) else v for k, v in point.items()})
    with torch.autocast("cuda", dtype=torch.float16):
        out = attn.cuda()(gpu).feat
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float().cpu(), expected, atol=2e-2, rtol=2e-2)


def test_auto_backend_is_the_default_and_uses_sdpa_without_flash_on_cpu():
    import subprocess, sys
    out = subprocess.run([sys.executable, "-c", "from sonata_nb.attention import get_attention_backend as g; print(g())"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[-1] == "auto"
    from sonata_nb import attention as A
    before = A.get_attention_backend()
    try:
        A.set_attention_backend("auto")
        cpu = torch.device("cpu")
        for dtype in (torch.float32, torch.bfloat16, torch.float16):  # the Triton kernel only on CUDA under "auto"
            assert A.SerializedAttention(32, 2, 16)._resolve_backend(cpu, dtype) == "sdpa"
            assert A.SerializedAttention(32, 2, 16, upcast_softmax=True)._resolve_backend(cpu, dtype) == "sdpa"
    finally:
        A.set_attention_backend(before)
