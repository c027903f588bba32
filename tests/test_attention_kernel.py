"""The Triton patch-attention kernel (`sonata_nb.attention_kernel`, attention backend "triton") on the CPU, in Triton's
interpreter: forward and gradients against the float64 per-patch oracle of tests/test_attention.py and against the
padded equal-size path, in float16 (the interpreter's bfloat16 matrix product is wrong; bfloat16 runs on the GPU). Each check runs in a fresh Python (`python
tests/test_attention_kernel.py CHECK`, forked by tests/forkserver.py), as the interpreter must be chosen before the
kernels are defined; GPU checks (compiled kernels, the whole encoder) are in tests/test_model.py."""
import importlib.util, os, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
from compiled import OLDER_TRITONS, older_triton


def run_check(forkserver, check:str, interpret:bool=True, **env) -> str:
    "Run `check` of this file in a fresh Python; its stdout"
    return forkserver.check(__file__, check, interpret, **env)


@needs_triton
@pytest.mark.parametrize("check", ["module_matches_oracle", "kernel_matches_padded_path", "bad_input", "no_grad", "chunks"])
def test_interpreted(forkserver, check):
    print(run_check(forkserver, check))


@needs_triton
def test_kernels_compile_for_the_gpu(forkserver):
    "The interpreter does not catch what only the compiler rejects: compile the kernels (both backwards) to PTX for sm_90"
    print(run_check(forkserver, "compile", interpret=False))


@needs_triton
@pytest.mark.parametrize("version", OLDER_TRITONS)
def test_kernels_compile_with_older_triton(forkserver, version):
    "The same compile check with torch 2.11's Triton, installed beside ours by .ci/run (as in tests/test_kernels.py)"
    print(run_check(forkserver, "compile", interpret=False, **older_triton(version)))


# ---------------------------------------------------------------- on the GPU (compiled kernels), in this process
from compiled import on_cuda as cuda


@cuda
@pytest.mark.parametrize("one_pass", [False, True])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_kernel_on_cuda_matches_the_padded_path(dtype, one_pass, monkeypatch):
    "Output and qkv gradient on CUDA against the padded path in float64: within 3x the padded path's own half error"
    import torch
    from sonata_nb import attention_kernel as AK
    from sonata_nb.attention_kernel import patch_attention
    monkeypatch.setattr(AK, "_one_pass", one_pass)  # both backwards
    dtype = getattr(torch, dtype)
    cases = [([70, 32, 5, 40, 9], 32, 2, 16), ([100, 7], 40, 3, 16), ([3, 5, 6], 8, 1, 32), ([64, 128], 32, 2, 16),
             ([3000, 2500, 700], 1024, 3, 16), ([5000], 1024, 32, 16), ([2100, 900], 1024, 4, 64)]
    for i, (counts, K, H, d) in enumerate(cases):
        g = torch.Generator().manual_seed(i)
        N, C, scale = sum(counts), H * d, d ** -0.5
        order = torch.randperm(N, generator=g).cuda()
        lay, maps = _maps(counts, K, order)
        x = (torch.randn(N, 3 * C, generator=g) * 1.5).cuda()
        grad = torch.randn(N, C, generator=g).cuda().to(dtype)
        runs = []
        for fn, cast in ((lambda q: patch_attention(q, H, scale, *maps), dtype), (lambda q: _padded(q, H, scale, lay, order), dtype),
                         (lambda q: _padded(q, H, scale, lay, order), torch.float64)):
            q = x.to(cast).clone().requires_grad_()
            out = fn(q); out.backward(grad.to(cast))
            assert out.dtype == cast and torch.isfinite(out).all() and torch.isfinite(q.grad).all()
            runs.append((out.double(), q.grad.double()))
        for j, what in enumerate(("output", "gradient")):
            err, half_err = [(r[j] - runs[2][j]).abs().max().item() for r in runs[:2]]
            print(counts, K, H, d, dtype, "one pass" if one_pass else "two passes", what, f"kernel {err:.1e}, padded {half_err:.1e}")
            assert err <= 3 * half_err + 1e-3 * runs[2][j].abs().max().item(), (counts, what, err, half_err)


@cuda
def test_chunked_launches_on_cuda_equal_one_launch(monkeypatch):
    "More patches than one launch may take (MAX_PATCHES lowered): the same output and gradient, bit for bit"
    import torch
    from sonata_nb import attention_kernel as AK
    order = torch.randperm(6000, generator=torch.Generator().manual_seed(0)).cuda()
    _, maps = _maps([2500, 1800, 1024, 600, 76], 64, order)
    x, g = torch.randn(6000, 144, device="cuda").half(), torch.randn(6000, 48, device="cuda").half()
    def run():
        q = x.clone().requires_grad_(); out = AK.patch_attention(q, 3, 0.25, *maps); out.backward(g)
        return out, q.grad
    whole = run()
    monkeypatch.setattr(AK, "MAX_PATCHES", 7)
    for a, b in zip(run(), whole): assert torch.equal(a, b)


@cuda
@pytest.mark.parametrize("enc_mode", [True, False])
def test_encoder_on_cuda_with_the_kernel_is_as_close_to_float32_as_with_sdpa(enc_mode):
    """A Sonata-width encoder's fp16-autocast forward and parameter gradients (a `ft` step) under "auto" (the kernel
    wherever it fits: every encoder block; the decoder's head dimension 12 blocks take SDPA): as close to the float32
    result as with SDPA everywhere (within 1.5x its relative L2 distance)"""
    import torch
    from sonata_nb import attention as A
    from sonata_nb.model import SONATA_CONFIG, PointTransformerV3, upcast
    from sonata_nb.testing import toy_cloud
    torch.manual_seed(0)
    m = PointTransformerV3(**{**SONATA_CONFIG, "enc_mode": enc_mode}).cuda().train()
    data = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in toy_cloud(n=6000, seed=3).items()}
    def run(backend, amp):
        A.set_attention_backend(backend)
        try:
            torch.manual_seed(1)  # the same stochastic-depth draws
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                out = m(data); out = upcast(out) if enc_mode else out.feat
            out.float().square().mean().backward()
            grads = torch.cat([p.grad.flatten().float() for p in m.parameters() if p.grad is not None])
            m.zero_grad(set_to_none=True)
            return out.float(), grads
        finally: A.set_attention_backend("auto")
    from sonata_nb import attention_kernel as AK
    calls, orig = [], AK.patch_attention
    AK.patch_attention = lambda *a, **k: calls.append(1) or orig(*a, **k)
    try: ref, kernel, sdpa = run("sdpa", False), run("auto", True), run("sdpa", True)
    finally: AK.patch_attention = orig
    fits = [a for a in m.modules() if isinstance(a, A.SerializedAttention) and a.channels // a.num_heads in (16, 32, 64, 128)]
    assert len(calls) == len(fits) >= sum(SONATA_CONFIG["enc_depths"]), (len(calls), len(fits))  # each such block once
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()
    for j, what in enumerate(("output", "gradients")):
        k_err, s_err = rel(kernel[j], ref[j]), rel(sdpa[j], ref[j])
        print(what, f"kernel {k_err:.2e}, sdpa {s_err:.2e} (relative L2 to float32)")
        assert k_err <= 1.5 * s_err + 1e-4, (what, k_err, s_err)


@cuda
def test_direct_launches_on_cuda_are_tritons():
    """kernels.Launcher's direct launches (after each key's first) give Triton's own launches' results bit for bit:
    column sums and LayerNorms of aligned and unaligned rows, and a Sonata-width encoder's fp16 forward"""
    import torch
    from sonata_nb import kernels
    from sonata_nb.model import SONATA_CONFIG, PointTransformerV3, upcast
    from sonata_nb.testing import toy_cloud
    flat = torch.randn(1001 * 48 + 1, device="cuda").half()
    w, b = torch.rand(48, device="cuda") + 0.5, torch.randn(48, device="cuda")
    def kernels_run():
        out = []
        for x in (flat[:-1].view(1001, 48), flat[1:].view(1001, 48), flat[:-1].view(1001, 48)):  # 16-byte aligned or not
            xi = x.clone().float().requires_grad_() if x.data_ptr() % 16 == 0 else x
            out.append(kernels.column_sum(x))
            y = kernels.fused_layer_norm(xi, w, b)
            out.append(y)
            if xi.requires_grad: y.square().sum().backward(); out.append(xi.grad)
        return out
    torch.manual_seed(0)
    m = PointTransformerV3(**SONATA_CONFIG).cuda().eval()
    data = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in toy_cloud(n=6000, seed=3).items()}
    def encoder_run():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16): return [upcast(m(data))]
    for run in (kernels_run, encoder_run):
        direct = [run(), run()]  # the second call launches directly
        kernels.set_fast_launch(False)
        try: triton_ = run()
        finally: kernels.set_fast_launch(True)
        for a, b_, c in zip(*direct, triton_): assert torch.equal(a, c) and torch.equal(b_, c)
    assert any(len(l.compiled) for l in kernels._launchers.values())


# ---------------------------------------------------------------- checks, run in the subprocess
def _setup():
    sys.path.insert(0, str(ROOT / "tests"))
    from sonata_nb import attention_kernel
    assert attention_kernel.available() and attention_kernel.interpreted()


def check_module_matches_oracle():
    "SerializedAttention on the kernel backend, float16 weights and features, against the float64 per-patch loop"
    _setup()
    import torch
    from test_attention import SIZES, make_point, oracle
    from sonata_nb.attention import SerializedAttention, set_attention_backend
    from sonata_nb.structure import Point
    for case, sizes in SIZES.items():
        for order_index in (0, 2):
            point = make_point(sizes, C=32)
            attn = SerializedAttention(32, 2, patch_size=8, order_index=order_index, upcast_attention=False,
                                       upcast_softmax=False).eval()
            expected = oracle(attn, Point(point), 8)
            set_attention_backend("triton")
            p = Point(point); p.feat = p.feat.half()
            got = attn.half()(p).feat.float()
            set_attention_backend("sdpa")
            attn.float()
            err = (got - expected).abs().max().item()
            assert err < 4e-3 * max(1.0, expected.abs().max().item()), (case, order_index, err)
            print(case, order_index, f"{err:.1e}")


def _maps(counts, K, order, index_dtype=None): # index_dtype: of the patches' rows (None: int64, as `SerializedAttention.maps`)
    import torch
    from sonata_nb.attention import patch_layout
    lay = patch_layout(torch.tensor(counts).cumsum(0).to(order.device), K, tuple(counts))
    full, short = (order[i].to(index_dtype or torch.int64) for i in (lay.full_index, lay.short_index))
    return lay, (full, lay.full_len, lay.dup_base, full.reshape(-1)[lay.dup_slot], short, lay.short_len)


def _padded(qkv, heads, scale, lay, order):
    "The equal-size path (explicit softmax) on gathered, padded patches, in qkv's dtype, back in qkv's rows"
    import torch
    from sonata_nb.attention import _patch_attention
    C, outs = qkv.shape[1] // 3, []
    for index, mask in ((order[lay.full_index], None), (order[lay.short_index], lay.short_mask)):
        if index.numel() == 0: continue
        q, k, v = qkv[index].unflatten(-1, (3, heads, C // heads)).permute(2, 0, 3, 1, 4).unbind(0)
        outs.append(_patch_attention(q, k, v, mask, scale, 0.0, math=True).transpose(1, 2).reshape(-1, C))
    return torch.cat(outs)[lay.out_index[torch.argsort(order)]]


def check_kernel_matches_padded_path():
    """Output and qkv gradient against the padded path in float32: within a few times the padded path's own error in
    the same half dtype. Cases: repeated slots, a sample of exactly K, short patches of two lengths; K not a multiple of
    the kernel's blocks; only short patches; only full patches, none repeating; head dimension 32"""
    _setup()
    import torch
    from sonata_nb import attention_kernel as AK
    from sonata_nb.attention_kernel import patch_attention
    cases = [([70, 32, 5, 40, 9], 32, 2, 16), ([100, 7], 40, 3, 16), ([3, 5, 6], 8, 1, 32), ([64, 128], 32, 2, 16),
             ([150], 72, 4, 16)]  # float16: the interpreter's bfloat16 matrix product is wrong (bfloat16: GPU test)
    dtype = torch.float16
    launched, launch = [], AK._launch
    AK._launch = lambda kernel, name, *a, **k: (launched.append(name), launch(kernel, name, *a, **k))[1]
    for i, (counts, K, H, d), one_pass in [(i, c, o) for o in (False, True) for i, c in enumerate(cases)]:
        AK.set_one_pass_backward(one_pass)  # both backwards: dk/dv then dq, or one pass adding dq atomically
        launched.clear()
        g = torch.Generator().manual_seed(i)
        N, C, scale = sum(counts), H * d, d ** -0.5
        order = torch.randperm(N, generator=g)
        lay, maps = _maps(counts, K, order)
        x = (torch.randn(N, 3 * C, generator=g) * 1.5).to(dtype)
        grad = torch.randn(N, C, generator=g).to(dtype)
        runs = {}
        for name, fn, cast in (("kernel", lambda q: patch_attention(q, H, scale, *maps), dtype),
                               ("padded_half", lambda q: _padded(q, H, scale, lay, order), dtype),
                               ("padded_float", lambda q: _padded(q, H, scale, lay, order), torch.float64)):
            q = x.to(cast).clone().requires_grad_()
            out = fn(q); out.backward(grad.to(cast))
            assert out.dtype == cast and torch.isfinite(out).all() and torch.isfinite(q.grad).all(), name
            runs[name] = (out.double(), q.grad.double())
        dkdv = "dkdv" if d <= 16 else "dkdv_wide"  # the wide heads' tile
        assert set(launched) == ({"fwd", "delta", "bwd"} if one_pass else {"fwd", "delta", dkdv, "dq"}), launched  # the backward asked for
        ref_out, ref_grad = runs["padded_float"]
        for j, what in enumerate(("output", "gradient")):
            err = (runs["kernel"][j] - runs["padded_float"][j]).abs().max().item()
            half_err = (runs["padded_half"][j] - runs["padded_float"][j]).abs().max().item()
            scale_ = runs["padded_float"][j].abs().max().item()
            print(counts, K, H, d, dtype, "one pass" if one_pass else "two passes", what,
                  f"kernel {err:.1e}, padded {str(dtype)[6:]} {half_err:.1e} (values up to {scale_:.2f})")
            assert err <= 3 * half_err + 1e-3 * scale_, (counts, what, err, half_err)


def check_no_grad():
    "Under no_grad (inference) the forward keeps nothing and gives the same output"
    _setup()
    import torch
    from sonata_nb.attention_kernel import patch_attention
    order = torch.randperm(60)
    lay, maps = _maps([45, 15], 16, order)
    x = torch.randn(60, 96).half()
    with torch.no_grad(): a = patch_attention(x, 2, 0.25, *maps)
    b = patch_attention(x.clone().requires_grad_(), 2, 0.25, *maps)
    with torch.no_grad(): c = patch_attention(x.clone().requires_grad_(), 2, 0.25, *maps)
    assert not a.requires_grad and b.requires_grad and c.grad_fn is None
    torch.testing.assert_close(a, b.detach(), rtol=0, atol=0); torch.testing.assert_close(a, c, rtol=0, atol=0)


def check_chunks():
    "More patches than one launch may take (MAX_PATCHES, lowered here): launched in chunks, the same output and gradient; int32 index maps as int64's"
    _setup()
    import torch
    from sonata_nb import attention_kernel as AK
    order = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    _, maps = _maps([70, 32, 5, 40, 9, 100, 3, 41], 16, order)  # 19 full patches, 2 short ones
    x, g = torch.randn(300, 96).half(), torch.randn(300, 32).half()
    def run(maps=maps):
        q = x.clone().requires_grad_(); out = AK.patch_attention(q, 2, 0.25, *maps); out.backward(g)
        return out, q.grad
    whole = run()
    assert maps[0].dtype == maps[4].dtype == torch.int64
    for a, b in zip(run(_maps([70, 32, 5, 40, 9, 100, 3, 41], 16, order, torch.int32)[1]), whole):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    AK.MAX_PATCHES = 4
    for a, b in zip(run(), whole): torch.testing.assert_close(a, b, rtol=0, atol=0)
    AK.set_one_pass_backward(True)  # dq added atomically: sums in another order, so equal within float32 rounding
    for a, b in zip(run(), whole): torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3)


def check_bad_input():
    "Wrong dtype, shape, head dimension: a ValueError that says what it needs; the backend switch refuses float32"
    _setup()
    import torch
    from sonata_nb.attention import SerializedAttention, set_attention_backend
    from sonata_nb.attention_kernel import patch_attention
    from sonata_nb.structure import Point
    from test_attention import make_point
    order = torch.randperm(20)
    _, maps = _maps([20], 8, order)
    for x, words in ((torch.randn(20, 96), "float16/bfloat16"), (torch.randn(20, 96).bfloat16(), "float16/bfloat16"), (torch.randn(20, 95).half(), "(N, 3C)"),
                     (torch.randn(20, 48).half(), "head dimension")):
        try: patch_attention(x, 2, 0.25, *maps)
        except ValueError as e: assert words in str(e), e
        else: raise AssertionError(f"no error for {words}")
    set_attention_backend("triton")
    try: SerializedAttention(32, 2, 8).eval()(make_point([20], C=32))
    except ValueError as e: assert "float16/bfloat16 qkv" in str(e) and "'sdpa'" in str(e), e
    else: raise AssertionError("the triton backend ran on float32 features")


def check_compile():
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from sonata_nb import attention_kernel as K
    assert not K.interpreted()
    expected = os.environ.get("SONATA_EXPECT_TRITON")  # the older Triton put first on the path
    assert expected in (None, triton.__version__), f"Triton {triton.__version__} imported, {expected} expected"
    if "nvidia" not in triton.backends.backends: print("no NVIDIA backend in this Triton: nothing compiled"); return
    # both dtypes at Sonata's head dimension and 32; 64 (dkdv's wide tile) in float16; int32 index maps once
    cases = [(t, D, "i64") for t in ("fp16", "bf16") for D in (16, 32)] + [("fp16", 64, "i64"), ("fp16", 16, "i32")]
    for t, D, i in cases:
        for whole in (True, False):
            for fn, name, sig in (
                    (K._pa_fwd, "fwd", dict(QKV=f"*{t}", Idx=f"*{i}", Qlen="*i64", Klen="*i64", Out=f"*{t}", Lse="*fp32",
                                            L="i32", C="i32", H="i32", qk_scale="fp32")),
                    *[(K._pa_dkdv, name, dict(QKV=f"*{t}", DO=f"*{t}", Lse="*fp32", Delta="*fp32", Idx=f"*{i}", Qlen="*i64",
                                              Klen="*i64", DupBase="*i64", DQKV=f"*{t}", DQ="*fp32", Dup="*fp32", L="i32",
                                              C="i32", H="i32", qk_scale="fp32", sm_scale="fp32"))
                      for name in ("dkdv" if D <= 16 else "dkdv_wide", "bwd")],  # two-pass (as launched) and one-pass backward
                    (K._pa_dq, "dq", dict(QKV=f"*{t}", DO=f"*{t}", Lse="*fp32", Delta="*fp32", Idx=f"*{i}", Qlen="*i64",
                                          Klen="*i64", DQKV=f"*{t}", L="i32", C="i32", H="i32", qk_scale="fp32",
                                          sm_scale="fp32"))):
                bm, bn, warps, stages = K.CONFIG[name]
                consts = dict(D=D, KLEN_IS_L=whole, BLOCK_M=bm, BLOCK_N=bn)
                if name == "fwd": consts["STORE_LSE"] = True
                if name in ("fwd", "dq"): consts["EVEN"] = whole
                if fn is K._pa_dkdv: consts.update(ONE_PASS=name == "bwd", EVEN_M=whole)  # both loads: unmasked, masked
                src = ASTSource(fn=fn, signature={**sig, **{k: "constexpr" for k in consts}}, constexprs=consts)
                k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))
                assert ".entry" in k.asm["ptx"]
        src = ASTSource(fn=K._pa_delta, signature=dict(DO=f"*{t}", O=f"*{t}", Idx=f"*{i}", Qlen="*i64", Delta="*fp32",
                                                       L="i32", C="i32", H="i32", D="constexpr", BLOCK_R="constexpr"),
                        constexprs=dict(D=D, BLOCK_R=K.DELTA_ROWS))
        assert ".entry" in triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4)).asm["ptx"]
    print("compiled for sm_90")


if __name__ == "__main__":
    globals()[f"check_{sys.argv[1]}"]()
