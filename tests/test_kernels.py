"""The Triton LayerNorm (`sonata_nb.kernels`) and the model's `set_fused_layernorm` switch, on the CPU.
The kernels run in Triton's interpreter, which must be chosen (TRITON_INTERPRET=1) before they are defined, so each
check runs in a fresh Python: this file run as a script, `python tests/test_kernels.py CHECK` (forked from one Python
that has imported torch and spconv, tests/forkserver.py: neither triton nor sonata_nb is imported before the check)."""
import contextlib, importlib.util, os, sys
from pathlib import Path

import pytest
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def run_check(forkserver, check:str, interpret:bool=True, **env) -> str:
    "Run `check` of this file in a fresh Python (the fused-LayerNorm switch at its default); its stdout"
    return forkserver.check(__file__, check, interpret, unset=("SONATA_FUSED_LAYERNORM",), **env)


@needs_triton
def test_layer_norm_matches_float64(forkserver):
    print(run_check(forkserver, "kernel"))


@needs_triton
def test_fused_block_matches_torch_block(forkserver):
    print(run_check(forkserver, "block"))


@needs_triton
def test_column_sum_and_linear(forkserver):
    "column_sum against float64; Linear / the MLP / a Block with the bias-gradient kernel against torch's sums"
    print(run_check(forkserver, "bias"))


@needs_triton
def test_residual_drop_path_is_torchs(forkserver):
    "residual_drop_path and a training Block through it give torch's DropPath + sum bit for bit (bf16 autocast, interpreter)"
    print(run_check(forkserver, "residual"))


@needs_triton
def test_block_stream_fusion_is_torchs(forkserver):
    "The CPE's `stream + norm` and the pre-norms' passed stream (set_fused_stream) give the unfused block's numbers bit for bit (interpreter)"
    print(run_check(forkserver, "stream"))


@needs_triton
def test_fused_gelu_backward(forkserver):
    "gelu_recompute_backward against float64; a training Block through it: torch's output, gradients within rounding, fc1's bias gradient float32 sums (interpreter)"
    print(run_check(forkserver, "gelu"))


@needs_triton
def test_fused_bias_grad(forkserver):
    "A training Block with `set_fused_bias_grad`: torch's output and gradients bit for bit but for the four biases summed by the kernels (float32 sums of the same gradients), with and without the fallback (interpreter)"
    print(run_check(forkserver, "fused_bias_grad"))


@needs_triton
def test_block_casts(forkserver):
    "A training Block with `set_block_casts`: torch's output and gradients bit for bit, its weights cast in one multi-tensor copy each way; no casts where they do not apply (interpreter)"
    print(run_check(forkserver, "block_casts"))


@needs_triton
def test_upcast_backward_by_cell_sum(forkserver):
    "The up-cast gathers each stage with `kernels.gather_rows` (torch's values) and its backward sums each stage's rows with `kernels.cell_sum` where the kernels run: float32 adds from zero in the rows' order, as torch's CUDA accumulation (interpreter)"
    print(run_check(forkserver, "upcast"))


def upcast_leaves(model, data):
    "(the encoder's Point with every stage's features a leaf needing a gradient, the stages' features)"
    import torch
    with torch.no_grad(): out = model(data)
    point, feats = out, []
    while True:
        point.feat = point.feat.detach().requires_grad_()
        feats.append(point.feat)
        if "pooling_parent" not in point.keys(): return out, feats
        point = point.pooling_parent


UPCAST_WIDE = dict(enc_channels=(48, 96, 40, 64), enc_num_head=(3, 6, 2, 4), enc_patch_size=(64,) * 4)  # rows wider than a warp too


@needs_triton
def test_launcher(forkserver):
    "Every launch site passes each kernel parameter (the direct launch needs them all, in order); the key and its cache"
    print(run_check(forkserver, "launch_sites"))
    print(run_check(forkserver, "launch_cache", interpret=False))
    print(run_check(forkserver, "arg_key", interpret=False))


@needs_triton
def test_serialization_kernel_matches_torch(forkserver):
    "encode_orders' Triton kernel gives the torch path's codes bit for bit (depths 1..16, any orders, with or without batch)"
    print(run_check(forkserver, "serialization"))


@needs_triton
def test_environment_switch(forkserver):
    run_check(forkserver, "env_on", interpret=False, SONATA_FUSED_LAYERNORM="1")
    run_check(forkserver, "env_off", interpret=False, SONATA_FUSED_LAYERNORM="0")
    run_check(forkserver, "env_on", interpret=False)  # the default
    with pytest.raises(AssertionError, match="SONATA_FUSED_LAYERNORM='yes'"):
        run_check(forkserver, "env_on", interpret=False, SONATA_FUSED_LAYERNORM="yes")


@needs_triton
def test_kernels_compile_for_the_gpu(forkserver):
    "The interpreter does not catch what only the compiler rejects: compile both kernels to PTX for sm_90 (no GPU needed)"
    print(run_check(forkserver, "compile", interpret=False))


from compiled import OLDER_TRITONS, older_triton


@needs_triton
@pytest.mark.parametrize("version", OLDER_TRITONS)
def test_kernels_compile_with_older_triton(forkserver, version):
    "The same compile check with an older Triton that users of an older torch get, installed beside ours by .ci/run"
    print(run_check(forkserver, "compile", interpret=False, **older_triton(version)))


from compiled import on_cuda


@on_cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("width", [96, 16, 32, 8])
def test_cell_max_on_cuda_is_the_torch_path_bitwise(dtype, width):
    "cell_max's kernels on CUDA against its torch operations on the CPU: maxima and gradients bit for bit, with many ties; Sonata's widths and a tiny model's (16 and 32 channels once failed to compile)"
    import torch
    from sonata_nb import kernels
    dtype = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 9, (5000,), generator=g)
    N = int(counts.sum())
    x0 = ((torch.randn(N, width, generator=g) * 2).round() / 2).to(dtype)  # few distinct values: ties in most cells
    perm, ptr = torch.randperm(N, generator=g), torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    gout = torch.randn(len(counts), width, generator=g).to(dtype)
    runs = []
    for dev in ("cuda", "cpu"):
        x = x0.to(dev).requires_grad_()
        out = kernels.cell_max(x, perm.to(dev), ptr.to(dev))
        out.backward(gout.to(dev))
        with torch.no_grad(): plain = kernels.cell_max(x0.to(dev), perm.to(dev), ptr.to(dev))  # no rows kept (STORE_ARG off)
        runs.append((out.detach().cpu(), x.grad.cpu(), plain.cpu()))
    for a, b in zip(*runs): assert torch.equal(a, b)


def cuda_block():
    "A training Block of Sonata's first stage width on CUDA and a two-cloud batch for it"
    import torch
    from sonata_nb import model
    from sonata_nb.testing import toy_cloud
    torch.manual_seed(0)
    block = model.Block(48, 3, patch_size=64, cpe_indice_key="stage0", drop_path=0.3).cuda().train()
    data = {k: v.cuda() if torch.is_tensor(v) else v for k, v in toy_cloud(n=3000, clouds=2, grid=0.05).items()}
    data["feat"] = torch.randn(len(data["coord"]), 48, device="cuda")
    return block, data


@on_cuda
@pytest.mark.parametrize("autocast", ["float16", "bfloat16", None])
def test_block_stream_fusion_on_cuda_is_bitwise(autocast):
    "A training Block on CUDA with and without `set_fused_stream`: output and every gradient bit for bit"
    import torch
    from sonata_nb import kernels, model
    block, data = cuda_block()
    runs = []
    before, bias_before = model._fused_stream, kernels._fused_bias_grad
    kernels.set_fused_bias_grad(False)  # torch's bias sums on both sides (the switch has its own test)
    try:
        with counting(model, "fused_layer_norm_passing") as calls:
            for on in (True, False):
                model.set_fused_stream(on)
                runs.append(block_step(block, data, autocast and getattr(torch, autocast), seed=3))
    finally: model.set_fused_stream(before); kernels.set_fused_bias_grad(bias_before)
    assert len(calls) == 2, calls  # norm1 and norm2 of the fused run
    same_runs(runs)


@on_cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", None])  # None: upcast's default (the stages' dtype)
def test_upcast_by_cell_sum_on_cuda_is_torchs_bitwise(dtype):
    "On CUDA: the up-cast by `kernels.gather_rows` and its stage gradients by `kernels.cell_sum` are torch's gathers and casts and its accumulating index_put's bit for bit (rows narrower and wider than a warp)"
    import torch
    from sonata_nb import kernels, model
    from sonata_nb.model import PointTransformerV3, upcast
    from sonata_nb.testing import toy_cloud
    from test_model import TINY
    torch.manual_seed(0)
    for config in (TINY, {**TINY, **UPCAST_WIDE}):
        m = PointTransformerV3(**config).cuda().eval()
        data = {k: v.cuda() if torch.is_tensor(v) else v for k, v in toy_cloud(n=20000, clouds=2, grid=0.02).items()}
        out, feats = upcast_leaves(m, data)  # one forward for both runs
        runs = []
        for kernel in (True, False):  # without: torch's gathers, casts and accumulating index_put
            for f in feats: f.grad = None
            before, launched, real = model._upcast_kernels, [], kernels.launcher
            model.set_upcast_kernels(kernel)
            kernels.launcher = lambda fn: launched.append(fn) or real(fn)
            try:
                up = upcast(out, dtype=None if dtype is None else getattr(torch, dtype))
                g = torch.randn(up.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1)).to(up.dtype)
                up.backward(g)
            finally: model.set_upcast_kernels(before); kernels.launcher = real
            # a gather per stage, a sum per stage but the finest (its rows are the output's)
            assert (launched.count(kernels._gather_rows), launched.count(kernels._cell_sum)) == ((len(feats), len(feats) - 1) if kernel else (0, 0)), launched
            runs.append([up.detach()] + [f.grad for f in feats])
        for a, b in zip(*runs): assert a.dtype == b.dtype and torch.equal(a, b)


@on_cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_block_casts_on_cuda_is_bitwise(dtype):
    "A training Block on CUDA under autocast with and without `set_block_casts`: output and every gradient bit for bit, the casts in two multi-tensor copies (the convolution's weight among them in float16)"
    import torch
    block, data = cuda_block()
    print(block_casts_match(block, data, getattr(torch, dtype), conv_cast=dtype == "float16"))


@on_cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fused_bias_grad_on_cuda(dtype):
    "A training Block on CUDA under autocast with and without `set_fused_bias_grad`: bit for bit but for the deferred biases' float32 sums (the CPE convolution's among them)"
    import torch
    block, data = cuda_block()
    for fallback in (False, True):
        report = fused_bias_grads_match(block, data, getattr(torch, dtype), fallback=fallback)
        assert "cpe.0.bias" in report, report  # the convolution's bias added in its kernel, its gradient column_sum's
        print(report)


def gelu_tolerances(x, da, dtype):
    "Allowed errors of gelu(x) and its backward in `dtype`: one rounding of the output (subnormals included) plus a last-bit error of a float32 erf, which 1 + erf(x/√2) passes on where it cancels"
    import torch
    fi = torch.finfo(dtype)
    tiny = fi.smallest_normal * fi.eps  # the smallest subnormal step
    return (lambda ref: fi.eps * ref.abs() + tiny + x.double().abs() * 2.0 ** -23,
            lambda ref: fi.eps * ref.abs() + tiny + da.double().abs() * 2.0 ** -22)


@on_cuda
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_fused_gelu_on_cuda_is_torchs_but_for_erf(dtype):
    "gelu_recompute_backward on CUDA: gelu(h) and dh torch's but for a last-bit difference of erf (libdevice's, not CUDA 13's), the sum float32's; an MLP trained through it: torch's output, gradients to rounding"
    import torch, torch.nn.functional as F
    from sonata_nb import kernels, model
    dtype = getattr(torch, dtype)
    eps = torch.finfo(dtype).eps
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(30000, 384, generator=g) * 4).to(dtype)
    h[0, :8] = torch.tensor([-20.0, -13.5, -9.0, -1e-3, 0.0, 1e-3, 13.5, 20.0]).to(dtype)  # tails, zero, tiny
    h, da = h.cuda(), torch.randn(h.shape, generator=g).to("cuda", dtype)
    a, dh, db = kernels.gelu_recompute_backward(da, h)
    tol_a, tol_dh = gelu_tolerances(h, da, dtype)
    for name, got, ref, tol in (("gelu", a, F.gelu(h), tol_a), ("backward", dh, torch.ops.aten.gelu_backward(da, h), tol_dh)):
        diff = (got.double() - ref.double()).abs()
        assert (diff <= tol(ref.double())).all(), (name, diff.max())
        print(dtype, name, "values differing from torch's:", (diff > 0).double().mean().item())
    exact = dh.double().sum(0)
    assert ((db.double() - exact).abs() <= 1e-6 * dh.double().abs().sum(0) + 1e-6).all()
    torch.manual_seed(0)
    mlp = model.MLP(96, 384).cuda()
    x0 = torch.randn(20000, 96, device="cuda")
    gy = torch.randn(20000, 96, generator=g).to("cuda")
    amp = dtype != torch.float32
    runs = []
    with counting(kernels, "gelu_recompute_backward") as calls:
        for on in (True, False):
            kernels.set_fused_gelu(on)
            try:
                x = x0.clone().requires_grad_()
                with torch.autocast("cuda", dtype=dtype, enabled=amp): y = mlp(x)
                y.backward(gy.to(y.dtype))
                runs.append([y.detach(), x.grad] + [p.grad.clone() for p in mlp.parameters()])
                mlp.zero_grad(set_to_none=True)
            finally: kernels.set_fused_gelu(True)
    assert len(calls) == 1, calls
    fused, plain = runs
    assert torch.equal(fused[0], plain[0]) and torch.equal(fused[-1], plain[-1])  # the forward; fc2's bias gradient
    for f, t in zip(fused[1:-1], plain[1:-1]):
        assert ((f.double() - t.double()).norm() / t.double().norm()).item() < max(4 * eps, 1e-6)


def test_imports_without_triton(forkserver):
    run_check(forkserver, "no_triton", interpret=False)


# ---------------------------------------------------------------- checks, run in the subprocess
def _err(a, e, dt):
    "Max error in units of one rounding of `dt` per value plus float32 rounding of the largest value (<= 1 passes)"
    import torch
    tol = torch.finfo(dt).eps * e.abs() + 1e-5 * e.abs().max() + 1e-6
    return ((a.double() - e).abs() / tol).max().item()


def check_kernel():
    import torch, torch.nn.functional as F
    from sonata_nb import kernels
    assert kernels.available() and kernels.interpreted()
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    # widths: Sonata's 48/96 and the up-cast's 1232, non-powers of two; rows: not multiples of the rows per program,
    # and for C=48 enough tiles that each backward program loops over several (and the last tile is partial)
    cases = [(48, 1100, f32, "wb", None), (96, 70, f16, "wb", None), (100, 37, bf16, "wb", None), (1232, 5, f32, "wb", None),
             (7, 13, f32, "", None), (20, 9, f16, "w", None), (48, 300, f32, "wb", f16), (64, 50, f16, "wb", f32),
             (48, 40, bf16, "b", bf16)]
    for C, N, dtype, affine, out_dtype in cases:
        g = torch.Generator().manual_seed(C * 7 + N)
        x = (torch.randn(N, C, generator=g) * 2 + 0.5).to(dtype).requires_grad_()
        w = (torch.rand(C, generator=g) + 0.5).requires_grad_() if "w" in affine else None
        b = torch.randn(C, generator=g).requires_grad_() if "b" in affine else None
        y = kernels.fused_layer_norm(x, w, b, 1e-5, out_dtype)
        assert y.dtype == (out_dtype or dtype) and y.shape == x.shape
        dy = torch.randn(N, C, generator=g).to(y.dtype)
        y.backward(dy)
        ref = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b)]
        r = F.layer_norm(ref[0], (C,), ref[1], ref[2], 1e-5)
        r.backward(dy.double())
        errs = {"y": _err(y, r, y.dtype), "dx": _err(x.grad, ref[0].grad, dtype)}
        if w is not None: errs["dw"] = _err(w.grad, ref[1].grad, f32)
        if b is not None: errs["db"] = _err(b.grad, ref[2].grad, f32)
        assert max(errs.values()) <= 1, (C, N, dtype, affine, out_dtype, errs)
        assert (w is None or w.grad.dtype == w.dtype) and x.grad.dtype == x.dtype
        print(C, N, dtype, affine, out_dtype, {k: round(v, 3) for k, v in errs.items()})
    # without gradients (no_grad, or nothing requiring grad) no autograd node is made: the same values
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(300, 48, generator=g), torch.rand(48, generator=g) + 0.5, torch.randn(48, generator=g)
    wg = w.clone().requires_grad_()
    with_node = kernels.fused_layer_norm(x, wg, b, out_dtype=f16)
    for y in (kernels.fused_layer_norm(x, w, b, out_dtype=f16), torch.no_grad()(kernels.fused_layer_norm)(x, wg, b, out_dtype=f16)):
        assert y.grad_fn is None and not y.requires_grad and torch.equal(y, with_node.detach())
    assert with_node.grad_fn is not None
    # leading dimensions, no rows
    x = torch.randn(2, 3, 48)
    torch.testing.assert_close(kernels.fused_layer_norm(x), F.layer_norm(x, (48,)))
    test = kernels.fused_layer_norm(torch.zeros(0, 48, requires_grad=True), torch.ones(48, requires_grad=True))
    assert test.shape == (0, 48); test.sum().backward()
    # out_dtype=bfloat16 is the rounding of the float32 result: the same bits but where the float32 values differ
    # in their last bits across a rounding boundary (then by one bfloat16 step, or float32 rounding of w·x̂ + b
    # where it cancels to almost 0)
    g = torch.Generator().manual_seed(5)
    x, w, b = torch.randn(4000, 96, generator=g) * 3, torch.rand(96, generator=g) + 0.5, torch.randn(96, generator=g)
    fused = kernels.fused_layer_norm(x, w, b, out_dtype=bf16).float()
    cast = F.layer_norm(x, (96,), w, b).to(bf16).float()
    diff = fused != cast
    step = cast.abs() * torch.finfo(bf16).eps + 1e-6
    assert diff.float().mean() < 1e-3 and ((fused - cast).abs() <= step)[diff].all(), diff.float().mean()
    print("bf16 output: fraction of values one rounding step from the torch cast:", diff.float().mean().item())
    # errors
    for call, msg in [(lambda: kernels.fused_layer_norm(torch.randn(4, 8), torch.ones(9)), "rows of x have 8 channels"),
                      (lambda: kernels.fused_layer_norm(torch.randn(4, 8).double()), "float64"),
                      (lambda: kernels.fused_layer_norm(torch.randn(4, 8), out_dtype=torch.int32), "out_dtype"),
                      (lambda: kernels.fused_layer_norm(torch.zeros(2, kernels.MAX_C + 1)), "channels")]:
        try: call()
        except (ValueError, TypeError) as e: assert msg in str(e), (msg, e)
        else: raise AssertionError(f"no error for {msg}")


@contextlib.contextmanager
def counting(owner, name:str):
    "The list of calls of `owner.name` made inside the block (the attribute wrapped, then restored)"
    calls, real = [], getattr(owner, name)
    def counted(*a, **k):
        calls.append(1)
        return real(*a, **k)
    setattr(owner, name, counted)
    try: yield calls
    finally: setattr(owner, name, real)


def block_step(block, data, dtype=None, seed=None):
    "(output, input gradient, parameter gradients) of a forward + backward of `block` on `data`, under autocast to `dtype` (None: off); `seed`: the global seed just before the forward (the DropPath draws)"
    import torch
    from sonata_nb.structure import Point
    block.zero_grad(set_to_none=True)
    p = Point({k: v.clone() for k, v in data.items()})
    p.feat.requires_grad_()
    feat_in = p.feat
    p.serialization(order=("z", "z-trans"), shuffle_orders=False)
    p.sparsify()
    if seed is not None: torch.manual_seed(seed)
    with torch.autocast(p.feat.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = block(p).feat
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, out.dtype))
    return out.detach(), feat_in.grad.clone(), {n: q.grad.clone() for n, q in block.named_parameters()}


def both_ways(block, data, dtype, switch, default, owner, name:str, seed:int=3):
    "`block_step` with `switch(True)`, then `switch(False)`, then `switch(default)`: (the two runs, the calls of `owner.name` made)"
    runs = []
    try:
        with counting(owner, name) as calls:
            for on in (True, False):
                switch(on)
                runs.append(block_step(block, data, dtype, seed=seed))
    finally: switch(default)
    return runs, calls


def same_runs(runs, what=""):
    "Two `block_step` results bit for bit: output (and its dtype), input gradient, every parameter gradient"
    import torch
    (o_f, g_f, p_f), (o_t, g_t, p_t) = runs
    assert o_f.dtype == o_t.dtype and torch.equal(o_f, o_t), what
    assert torch.equal(g_f, g_t), what
    for n in p_t: assert torch.equal(p_f[n], p_t[n]), (what, n)


def _tiny_block_run(block, data, fused:bool, autocast:bool):
    "Output, input gradient and parameter gradients of `block` on `data`, with the fused switch `fused`"
    import torch
    from sonata_nb import model
    before = model._fused_layernorm
    model.set_fused_layernorm(fused)
    dtypes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: dtypes.__setitem__(n, o.dtype))
             for n, m in block.named_modules() if isinstance(m, model.LayerNorm)]
    try:
        with counting(model, "fused_layer_norm") as calls:
            out, grad, grads = block_step(block, data, torch.bfloat16 if autocast else None)
        return out.float(), grad, grads, len(calls), dtypes
    finally:
        for h in hooks: h.remove()
        model.set_fused_layernorm(before)


def check_block():
    import torch
    from sonata_nb import model
    from sonata_nb import kernels
    from sonata_nb.testing import toy_cloud
    kernels.set_fused_bias_grad(False)  # torch's bias sums on both sides (the switch has its own test)
    model._fused_on_cpu = True  # the interpreted kernels on CPU tensors
    torch.manual_seed(0)
    block = model.Block(48, 3, patch_size=64, cpe_indice_key="stage0")
    for m in block.modules():  # LayerNorms with non-trivial affine parameters
        if isinstance(m, model.LayerNorm): m.weight.data.uniform_(0.5, 1.5); m.bias.data.uniform_(-0.5, 0.5)
    data = toy_cloud(n=300, clouds=2, grid=0.1)
    data["feat"] = torch.randn(len(data["coord"]), 48, generator=torch.Generator().manual_seed(2))
    def rel(a, b): return ((a.double() - b.double()).norm() / b.double().norm()).item()
    # float32: the same function to float32 rounding
    o_t, gx_t, gp_t, n_t, _ = _tiny_block_run(block, data, False, False)
    o_f, gx_f, gp_f, n_f, _ = _tiny_block_run(block, data, True, False)
    assert n_t == 0 and n_f == 3, (n_t, n_f)  # cpe, norm1 and norm2 ran the kernel
    torch.testing.assert_close(o_f, o_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_f, gx_t, rtol=1e-4, atol=1e-5)
    for n in gp_t: torch.testing.assert_close(gp_f[n], gp_t[n], rtol=1e-4, atol=1e-4, msg=n)
    print("float32: output rel", rel(o_f, o_t), "input grad rel", rel(gx_f, gx_t))
    # bf16 autocast: the pre-norms write bfloat16 (what qkv / fc1 cast it to), the others the dtypes torch gives;
    # against the float32 run the fused path is as close as torch's own path (CPU autocast runs layer_norm and its
    # backward in bfloat16 where the input is bfloat16, the kernel accumulates in float32: often closer)
    o_t, gx_t, gp_t, _, dt_t = _tiny_block_run(block, data, False, True)
    o_f, gx_f, gp_f, n_f, dt_f = _tiny_block_run(block, data, True, True)
    assert n_f == 3 and dt_f["norm1.0"] == dt_f["norm2.0"] == torch.bfloat16, dt_f
    assert dt_f["cpe.2"] == dt_t["cpe.2"], (dt_f, dt_t)
    o_32, gx_32, gp_32, _, _ = _tiny_block_run(block, data, False, False)
    pairs = [("output", o_f, o_t, o_32), ("input grad", gx_f, gx_t, gx_32)] + [(n, gp_f[n], gp_t[n], gp_32[n]) for n in gp_t]
    for name, f, t, ref in pairs:
        e_f, e_t = rel(f, ref), rel(t, ref)
        assert e_f <= 1.5 * e_t + 1e-3, (name, e_f, e_t)
        print(f"bf16 autocast, {name}: rel. L2 to float32 fused {e_f:.2e}, torch {e_t:.2e}")
    # without the private flag CPU tensors keep torch's layer_norm
    model._fused_on_cpu = False
    assert _tiny_block_run(block, data, True, False)[3] == 0


def check_residual():
    import torch
    from sonata_nb import kernels, model
    from sonata_nb.testing import toy_cloud
    kernels.set_fused_bias_grad(False)  # torch's bias sums on both sides (the switch has its own test)
    kernels._on_cpu = True  # the interpreted kernels on CPU tensors
    torch.manual_seed(0)
    block = model.Block(48, 3, patch_size=64, cpe_indice_key="stage0", drop_path=0.4).train()
    data = toy_cloud(n=300, clouds=2, grid=0.1)
    data["feat"] = torch.randn(len(data["coord"]), 48, generator=torch.Generator().manual_seed(2))
    runs = []
    with counting(kernels, "_residual_drop_path") as calls:
        for fused in (True, False):
            model.set_fused_residual(fused)
            runs.append(block_step(block, data, torch.bfloat16, seed=5))
    model.set_fused_residual(True)
    assert len(calls) == 2, calls  # the attention and the MLP branch of the fused run
    same_runs(runs)
    assert runs[0][0].dtype == torch.float32
    block.eval()  # eval: DropPath is off, the plain sum
    with counting(kernels, "_residual_drop_path") as calls:
        block_step(block, data, torch.bfloat16)
    assert len(calls) == 0, calls
    print("residual_drop_path: a training block bitwise torch's; in eval torch's sum")


def check_stream():
    import torch
    from sonata_nb import kernels, model
    from sonata_nb.testing import toy_cloud
    kernels.set_fused_bias_grad(False)  # torch's bias sums on both sides (the switch has its own test)
    assert model._fused_stream  # on by default (its CUDA test passed on an H100, 2026-12-07 07:44)
    model._fused_on_cpu = True  # the interpreted kernels on CPU tensors
    torch.manual_seed(0)
    block = model.Block(48, 3, patch_size=64, cpe_indice_key="stage0", drop_path=0.3).train()
    for m in block.modules():
        if isinstance(m, model.LayerNorm): m.weight.data.uniform_(0.5, 1.5); m.bias.data.uniform_(-0.5, 0.5)
    data = toy_cloud(n=300, clouds=2, grid=0.1)
    data["feat"] = torch.randn(len(data["coord"]), 48, generator=torch.Generator().manual_seed(2))
    for dtype in (None, torch.bfloat16):
        runs = []
        added, real = [], model.fused_layer_norm
        model.fused_layer_norm = lambda *a, **k: added.append(k.get("residual") is not None) or real(*a, **k)
        try:
            with counting(model, "fused_layer_norm_passing") as passed:
                for on in (True, False):
                    model.set_fused_stream(on)
                    runs.append(block_step(block, data, dtype, seed=5))
        finally: model.fused_layer_norm = real
        assert len(passed) == 2, passed  # norm1 and norm2 of the fused run
        assert added == [True, False, False, False], added  # the fused run's CPE added its stream in the kernel
        same_runs(runs, dtype)
    model.set_fused_stream(True)
    hook = block.norm1[0].register_forward_hook(lambda m, i, o: None)  # a hooked norm: called as a module, unfused
    with counting(model, "fused_layer_norm_passing") as passed: block_step(block, data)
    assert len(passed) == 1, passed
    hook.remove()
    model._fused_on_cpu = False
    print("stream fusion: a training Block bitwise the unfused one, float32 and bf16 autocast")


def check_gelu():
    import torch, torch.nn.functional as F
    from sonata_nb import kernels, model
    from sonata_nb.testing import toy_cloud
    kernels.set_fused_bias_grad(False)  # torch's bias sums on both sides (the switch has its own test)
    assert kernels.interpreted() and kernels._fused_gelu  # on by default
    g = torch.Generator().manual_seed(0)
    # against float64: rows more than the programs' bands, widths of several column tiles, the tails, no rows
    for N, C, dtype in [(5000, 192, torch.float16), (777, 300, torch.bfloat16), (500, 64, torch.float32), (0, 5, torch.float16),
                        (4, 0, torch.float32)]:
        h = (torch.randn(N, C, generator=g) * 4).to(dtype)
        if N and C: h[0, :5] = torch.tensor([-20.0, -9.0, 0.0, 1e-3, 20.0]).to(dtype)
        da = torch.randn(N, C, generator=g).to(dtype)
        a, dh, db = kernels.gelu_recompute_backward(da, h)
        tol_a, tol_dh = gelu_tolerances(h, da, dtype)
        for got, exact, tol in [(a, F.gelu(h.double()), tol_a), (dh, torch.ops.aten.gelu_backward(da.double(), h.double()), tol_dh)]:
            assert got.dtype == dtype and got.shape == h.shape and ((got.double() - exact).abs() <= tol(exact)).all(), (N, C, dtype)
        exact = dh.double().sum(0)  # the float32 sums of the rounded dh
        assert db.dtype == torch.float32 and ((db.double() - exact).abs() <= 1e-6 * dh.double().abs().sum(0) + 1e-6).all(), (N, C, dtype)
        assert kernels.gelu_recompute_backward(da, h, bias_sum=False)[2] is None
    x = torch.randn(500, 64, generator=g)  # the tanh approximation is not this function (float32 tolerances)
    tol_a, _ = gelu_tolerances(x, x, torch.float32)
    assert not ((F.gelu(x, approximate="tanh").double() - F.gelu(x.double())).abs() <= tol_a(F.gelu(x.double()))).all()
    a3 = kernels.gelu_recompute_backward(x.view(5, 100, 64), x.view(5, 100, 64))[0]  # leading dimensions
    assert a3.shape == (5, 100, 64) and torch.equal(a3.view(500, 64), kernels.gelu_recompute_backward(x, x)[0])
    for bad, msg in [((torch.ones(3, 4), torch.ones(3, 5)), "of one shape"), ((torch.ones(3).double(), torch.ones(3).double()), "float32, float16"),
                     ((torch.ones(3), torch.ones(3).half()), "of one dtype")]:
        try: kernels.gelu_recompute_backward(*bad)
        except ValueError as e: assert msg in str(e), e
        else: raise AssertionError(msg)
    # a Block trained under bf16 autocast: the forward is unchanged, the gradients within rounding of torch's (its CPU
    # GELU has its own erf), fc1's bias gradient closer to the float32 run's (torch rounds its sums to bfloat16)
    kernels._on_cpu = True
    try:
        torch.manual_seed(0)
        block = model.Block(48, 3, patch_size=64, cpe_indice_key="stage0")
        data = toy_cloud(n=300, clouds=2, grid=0.1)
        data["feat"] = torch.randn(len(data["coord"]), 48, generator=torch.Generator().manual_seed(2))
        runs = []
        with counting(kernels, "gelu_recompute_backward") as calls:
            for on, dtype in ((True, torch.bfloat16), (False, torch.bfloat16), (False, None)):
                kernels.set_fused_gelu(on)
                try: runs.append(block_step(block, data, dtype))
                finally: kernels.set_fused_gelu(True)
        assert len(calls) == 1, calls
        (o_f, g_f, p_f), (o_t, g_t, p_t), (_, _, p_32) = runs
        assert torch.equal(o_f, o_t)
        torch.testing.assert_close(g_f, g_t, rtol=2e-2, atol=1e-2)
        for n in p_t: torch.testing.assert_close(p_f[n], p_t[n], rtol=2e-2, atol=2e-2 * p_t[n].abs().max().item(), msg=n)
        n = "mlp.0.fc1.bias"
        e_f, e_t = (p_f[n] - p_32[n]).norm(), (p_t[n] - p_32[n]).norm()
        assert e_f <= e_t * 1.05 + 1e-6, (e_f, e_t)
        print("gelu: fc1 bias gradient error to float32, fused / torch:", round((e_f / e_t.clamp_min(1e-12)).item(), 3))
        # under create_graph the MLP's backward takes torch's differentiable operations (the kernel's outputs have no history)
        mlp = model.MLP(8, 16)
        x = torch.randn(30, 8, generator=torch.Generator().manual_seed(4), requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16): y = mlp(x)
        with counting(kernels, "gelu_recompute_backward") as calls:
            gx, = torch.autograd.grad(y.float().pow(2).sum(), x, create_graph=True)
        assert len(calls) == 0 and gx.requires_grad, calls
    finally: kernels._on_cpu = False


def check_bias():
    import torch
    from torch import nn
    from sonata_nb import kernels, model
    from sonata_nb.testing import toy_cloud
    kernels.set_fused_bias_grad(False)  # torch's bias sums on both sides (the switch has its own test)
    assert kernels.interpreted() and not kernels._bias_grad_kernel  # off by default
    kernels.set_bias_grad_kernel(True)
    kernels.set_fused_gelu(False)  # fc1's bias sum by column_sum here (the GELU kernel sums it otherwise: check_gelu)
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    g = torch.Generator().manual_seed(0)
    # widths of one and of several column tiles (128), rows more than the programs' bands (interpreter: 8 programs)
    for N, C, dtype in [(5000, 48, f16), (777, 300, bf16), (3, 7, f32), (4097, 130, f16), (1, 1, f32), (0, 5, f16), (6, 0, f32)]:
        x = (torch.randn(N, C, generator=g) * 4 + 1).to(dtype)
        s = kernels.column_sum(x)
        exact = x.double().sum(0)
        assert s.dtype == f32 and s.shape == (C,)
        assert ((s.double() - exact).abs() <= 2e-7 * x.double().abs().sum(0) + 1e-6).all(), (N, C, dtype)
    x = torch.randn(64, 10, generator=g)
    torch.testing.assert_close(kernels.column_sum(x.t()), x.t().sum(0), rtol=1e-6, atol=1e-5)  # strided rows
    for bad, msg in [(torch.ones(3), "2-D"), (torch.ones(2, 2, dtype=torch.float64), "float64"), (torch.ones(2, 2, 2), "2-D")]:
        try: kernels.column_sum(bad)
        except ValueError as e: assert msg in str(e), e
        else: raise AssertionError(msg)
    # Linear: only on the kernels' device (here the interpreter's CPU, asked for), under autocast, training a bias
    lin = kernels.Linear(48, 20)
    x = torch.randn(300, 48, generator=g, requires_grad=True)
    with torch.autocast("cpu", dtype=bf16): assert lin(x).grad_fn.name() == "AddmmBackward0"  # not asked: torch's
    kernels._on_cpu = True
    try:
        with torch.autocast("cpu", dtype=bf16):
            assert lin(x).grad_fn.name() == "AutocastLinearBackward"
            with torch.no_grad(): assert lin(x).grad_fn is None
            lin.bias.requires_grad_(False); assert lin(x).grad_fn.name() != "AutocastLinearBackward"; lin.bias.requires_grad_(True)
            kernels.set_bias_grad_kernel(False); assert lin(x).grad_fn.name() != "AutocastLinearBackward"; kernels.set_bias_grad_kernel(True)
        assert lin(x).grad_fn.name() != "AutocastLinearBackward"  # no autocast: torch's float32 linear
        # leading dimensions, an input that needs no gradient, a float32 or bfloat16 input
        for shape, grad_x, dtype in [((4, 50, 48), True, f32), ((300, 48), False, f32), ((300, 48), True, bf16)]:
            ref = nn.Linear(48, 20); ref.load_state_dict(lin.state_dict())
            xs = torch.randn(shape, generator=g).to(dtype)
            outs = []
            for m in (lin, ref):
                xi = xs.clone().requires_grad_(grad_x)
                with torch.autocast("cpu", dtype=bf16): y = m(xi)
                dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype)
                y.backward(dy)
                outs.append((y, xi.grad, m.weight.grad.clone(), m.bias.grad.clone()))
                m.zero_grad(set_to_none=True)
            for a, b in zip(outs[0][:3], outs[1][:3]):  # output, input and weight gradients: torch's, bit for bit
                assert (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b)), shape
            exact = dy.double().reshape(-1, 20).sum(0)
            assert outs[0][3].dtype == f32 and (outs[0][3].double() - exact).abs().max() < 1e-4, shape
        # a Block trained under autocast: the same outputs and gradients as with torch's sums, bias gradients closer to
        # the float32 run's (torch rounds them to bfloat16)
        torch.manual_seed(0)
        block = model.Block(48, 3, patch_size=64, cpe_indice_key="stage0")
        data = toy_cloud(n=300, clouds=2, grid=0.1)
        data["feat"] = torch.randn(len(data["coord"]), 48, generator=torch.Generator().manual_seed(2))
        sums, real = [], kernels.column_sum
        def counted(g):
            sums.append(g.shape[1])
            return real(g)
        def run(kernel, autocast=True):
            kernels.set_bias_grad_kernel(kernel)
            kernels.column_sum = model.column_sum = counted
            try: return _tiny_block_run(block, data, False, autocast)
            finally: kernels.set_bias_grad_kernel(True); kernels.column_sum = model.column_sum = real  # (this check's setting)
        o_k, gx_k, gp_k, _, _ = run(True)
        assert sorted(sums) == [48, 48, 48, 48, 144, 192], sums  # cpe conv and Linear, proj, fc2, qkv, fc1: all by the kernel
        o_t, gx_t, gp_t, _, _ = run(False)
        o_32, _, gp_32, _, _ = run(True, autocast=False)
        assert len(sums) == 6, sums  # neither with the switch off nor without autocast
        assert torch.equal(o_k, o_t)
        biases = [n for n in gp_t if n.endswith("bias") and "norm" not in n and "cpe.2" not in n]
        assert sorted(biases) == ["attn.proj.bias", "attn.qkv.bias", "cpe.0.bias", "cpe.1.bias", "mlp.0.fc1.bias", "mlp.0.fc2.bias"], biases
        for n in gp_t:
            if n in biases:  # the kernel's float32 sums against torch's bfloat16 ones
                e_k, e_t = (gp_k[n] - gp_32[n]).norm(), (gp_t[n] - gp_32[n]).norm()
                assert e_k <= e_t * 1.05 + 1e-6, (n, e_k, e_t)
            torch.testing.assert_close(gp_k[n], gp_t[n], rtol=2e-2, atol=2e-2 * gp_t[n].abs().max().item(), msg=n)
        torch.testing.assert_close(gx_k, gx_t, rtol=2e-2, atol=1e-2)
        print("block: bias gradient errors to float32, kernel vs torch:",
              {n: round(((gp_k[n] - gp_32[n]).norm() / (gp_t[n] - gp_32[n]).norm().clamp_min(1e-12)).item(), 3) for n in biases})
    finally: kernels._on_cpu = False


DEFERRED = ("cpe.1.bias", "attn.qkv.bias", "attn.proj.bias", "mlp.0.fc2.bias")  # the Linears' biases the kernels sum


def fused_bias_grads_match(block, data, dtype, fallback:bool=False, residuals:int=2) -> str:
    "`block_step` with `kernels.set_fused_bias_grad` on and off: all bit for bit but `DEFERRED` (and the CPE convolution's bias where its kernel adds it), each a float32 sum of the gradient at its Linear's output (captured in the run without the switch), at least as close to float64 as torch's sum; `fallback`: with the CPE's norm off the stream path (`with_bias_gradient` sums its Linear's bias); `residuals`: the residual kernel's runs expected (without it, `with_bias_gradient` sums proj's and fc2's)"
    import torch
    from sonata_nb import kernels, model
    outs = {}  # the gradients reaching the four Linears' outputs in the run without the switch
    def capture(name):
        def hook(m, i, o): o.register_hook(lambda g: outs.__setitem__(name, g))  # returns None: the output stays
        return hook
    layers = dict(zip(DEFERRED, (block.cpe._modules["1"], block.attn.qkv, block.attn.proj, block.mlp._modules["0"])))
    conv, in_kernel = block.cpe._modules["0"], []  # whether the switched run's convolution added its bias in the kernel
    stream, before = model._fused_stream, kernels._fused_bias_grad
    try:
        if fallback: model.set_fused_stream(False)
        with counting(kernels, "with_bias_gradient") as fallbacks, counting(kernels, "_residual_drop_path") as kernel_runs:
            kernels.set_fused_bias_grad(True)
            h = conv.register_forward_hook(lambda m, i, o: in_kernel.append(o.features.grad_fn.name() == "SubmanifoldConvBackward"))
            try: o_f, g_f, p_f = block_step(block, data, dtype, seed=3)
            finally: h.remove()
        kernels.set_fused_bias_grad(False)
        handles = [m.register_forward_hook(capture(n)) for n, m in layers.items()]
        handles.append(conv.register_forward_hook(lambda m, i, o: o.features.register_hook(lambda g: outs.__setitem__("cpe.0.bias", g)) and None))
        try: o_t, g_t, p_t = block_step(block, data, dtype, seed=3)
        finally:
            for h in handles: h.remove()
    finally: kernels.set_fused_bias_grad(before); model.set_fused_stream(stream)
    assert len(fallbacks) == int(fallback) + 2 - residuals and len(kernel_runs) == residuals, (fallbacks, kernel_runs)
    assert o_f.dtype == o_t.dtype and torch.equal(o_f, o_t) and torch.equal(g_f, g_t)
    summed = DEFERRED + ("cpe.0.bias",) * in_kernel[0]  # the convolution's bias in its kernel: its gradient column_sum's too
    assert sorted(outs) == sorted(DEFERRED + ("cpe.0.bias",)), outs
    report = {}
    for n in p_t:
        if n not in summed:
            assert torch.equal(p_f[n], p_t[n]), n
            continue
        g = outs[n].double().reshape(-1, outs[n].shape[-1])
        exact = g.sum(0)
        err_f, err_t = (p_f[n].double() - exact).abs(), (p_t[n].double() - exact).abs()
        assert p_f[n].dtype == torch.float32 and (err_f <= 1e-6 * g.abs().sum(0) + 1e-6).all(), (n, err_f.max())
        if dtype is not None: assert err_f.max() <= err_t.max(), (n, err_f.max(), err_t.max())  # torch's sum rounds to the half dtype
        report[n] = f"{err_f.max().item():.1e} (torch {err_t.max().item():.1e})"
    return f"{dtype}: bit for bit but the deferred biases; their errors to float64: {report}"


def interpreted_block():
    "A training Block of Sonata's first stage width and a two-cloud batch for it, on CPU tensors through the interpreted kernels (the attention kernel too)"
    import torch
    from sonata_nb import kernels, model
    from sonata_nb.attention import set_attention_backend
    from sonata_nb.testing import toy_cloud
    kernels._on_cpu = model._fused_on_cpu = True  # the interpreted kernels on CPU tensors
    set_attention_backend("triton")  # the patch-attention kernel (float16 in the interpreter)
    torch.manual_seed(0)
    block = model.Block(48, 3, patch_size=64, cpe_indice_key="stage0", drop_path=0.4).train()
    data = toy_cloud(n=300, clouds=2, grid=0.1)
    data["feat"] = torch.randn(len(data["coord"]), 48, generator=torch.Generator().manual_seed(2))
    return block, data


class CastSources(TorchDispatchMode):
    "The data pointers of the tensors cast or copied from inside it (`_to_copy`'s input, `copy_`'s source), the backward's included; the multi-tensor copies counted"
    def __init__(self): super().__init__(); self.sources, self.foreach = set(), 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name == "_to_copy": self.sources.add(args[0].data_ptr())
        elif name == "copy_": self.sources.add(args[1].data_ptr())
        elif name == "_foreach_copy_": self.foreach += 1
        return func(*args, **(kwargs or {}))


def block_casts_match(block, data, dtype, conv_cast:bool, qkv_bias:bool=True) -> str: # qkv_bias: its bias deferred (the attention kernel)
    "`block_step` with `kernels.set_block_casts` on and off: output and every gradient bit for bit, one `cast_params` call whose two multi-tensor copies make every cast of the block's weights and deferred biases (the switched run casts none of them otherwise, the plain run casts them all)"
    import torch
    from sonata_nb import kernels
    attn, mlp, lin, conv = block.attn, block.mlp._modules["0"], block.cpe._modules["1"], block.cpe._modules["0"]
    cast = [m.weight for m in (lin, attn.qkv, attn.proj, mlp.fc1, mlp.fc2)] + [lin.bias, attn.proj.bias, mlp.fc2.bias]
    if qkv_bias: cast.append(attn.qkv.bias)  # else autocast casts it (its gradient is the Linear's own)
    if conv_cast: cast.append(conv.weight)  # float16 on CUDA
    ptrs = {t.data_ptr() for t in cast}
    runs, modes, was = [], [], kernels._block_casts
    try:
        with counting(kernels, "cast_params") as calls:
            for on in (True, False):
                kernels.set_block_casts(on)
                with CastSources() as mode: runs.append(block_step(block, data, dtype, seed=3))
                modes.append(mode)
    finally: kernels.set_block_casts(was)
    same_runs(runs)
    assert len(calls) == 1, calls  # the switched run's block
    assert modes[0].foreach == 2 and modes[1].foreach == 0, (modes[0].foreach, modes[1].foreach)  # one copy each way
    assert not ptrs & modes[0].sources, "a layer cast its weight or bias itself"
    assert ptrs <= modes[1].sources, "the plain run does not cast them all: the check would miss a layer"
    return f"{dtype}: bit for bit; {len(ptrs)} casts in one multi-tensor copy (and their gradients in another)"


def check_block_casts():
    import torch
    from sonata_nb import kernels
    from sonata_nb.attention import set_attention_backend
    assert kernels._block_casts  # on by default
    block, data = interpreted_block()
    print(block_casts_match(block, data, torch.float16, conv_cast=False))  # the convolution casts its weight on CUDA only
    set_attention_backend("sdpa")  # qkv through its module call (`Linear.forward`), not `linear_detached_bias`
    print(block_casts_match(block, data, torch.float16, conv_cast=False, qkv_bias=False))
    # nothing cast: no autocast, a hooked Linear, frozen weights, no gradient
    from sonata_nb.structure import Point
    def step(dtype, grad=True):
        p = Point({k: v.clone() for k, v in data.items()})
        p.serialization(order=("z", "z-trans"), shuffle_orders=False); p.sparsify()
        with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=dtype or torch.float16, enabled=dtype is not None):
            out = block(p).feat
        if grad: out.float().sum().backward()
    with counting(kernels, "cast_params") as calls:  # the switch as it is by default (on)
        step(torch.float16)
        assert len(calls) == 1, calls  # the switch on: cast (the check of the path below)
        step(None)
        h = block.attn.proj.register_forward_hook(lambda m, i, o: None)
        try: step(torch.float16)
        finally: h.remove()
        block.attn.qkv.requires_grad_(False)
        try: step(torch.float16)
        finally: block.attn.qkv.requires_grad_(True)
        step(torch.float16, grad=False)
    assert len(calls) == 1, calls
    print("block casts: bit for bit; none without autocast, with a hook, with a frozen weight or without gradients")


def check_fused_bias_grad():
    import torch
    from sonata_nb import kernels
    from sonata_nb.attention import set_attention_backend
    assert kernels._fused_bias_grad  # on by default (its CUDA test passed and it measured faster on an H100, 2026-12-07 09:38)
    block, data = interpreted_block()
    print(fused_bias_grads_match(block, data, torch.float16))
    print(fused_bias_grads_match(block, data, torch.float16, fallback=True))
    set_attention_backend("sdpa")  # float32, no autocast: the residual kernel declines, `with_bias_gradient` sums proj's and fc2's
    print(fused_bias_grads_match(block, data, None, residuals=0))
    # the CPE's norm with only the Linear's bias trained: the same dtypes as torch's path (a gradient still flows through it)
    ln, r = block.cpe._modules["2"], torch.randn(50, 48)
    xh, b = torch.randn(50, 48).half(), torch.zeros(48, requires_grad=True)
    ln.requires_grad_(False)
    assert ln.add_to(r, xh, x_bias=b).dtype == ln.add_to(r, xh.clone().requires_grad_()).dtype == torch.float32
    ln.requires_grad_(True)
    # the fallback is differentiable twice (torch's sum under create_graph); no deferral for float64 inputs
    x = torch.randn(20, 48, dtype=torch.float64, requires_grad=True)
    db, = torch.autograd.grad(kernels.with_bias_gradient(x, b.double()).pow(2).sum(), b, create_graph=True)
    db.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))
    assert not kernels.defers_bias(block.attn.qkv, x)
    # nothing deferred: eval (no gradient), a hooked Linear keeps its module call, the switch off
    kernels.set_fused_bias_grad(True)
    x = torch.randn(10, 48)
    assert kernels.defers_bias(block.attn.qkv, x)
    with torch.no_grad(): assert not kernels.defers_bias(block.attn.qkv, x)
    h = block.attn.qkv.register_forward_hook(lambda m, i, o: None)
    assert not kernels.defers_bias(block.attn.qkv, x)
    h.remove()
    kernels._on_cpu = False
    assert not kernels.defers_bias(block.attn.qkv, x)  # CPU tensors outside the tests' interpreter runs
    kernels._on_cpu = True
    kernels.set_fused_bias_grad(False)
    assert not kernels.defers_bias(block.attn.qkv, x)
    print("defers_bias: only with the switch, a gradient, no hooks, on the kernels' device")


def check_launch_sites():
    import torch
    from sonata_nb import kernels, attention_kernel
    seen = {}
    real = kernels.Launcher.launch
    def spy(self, grid, args, kwargs):
        missing = [n for n in self.names[len(args):] if n not in kwargs]
        assert not missing, (self.fn.__name__, missing)
        seen[self.fn.__name__] = seen.get(self.fn.__name__, 0) + 1
        return real(self, grid, args, kwargs)
    kernels.Launcher.launch = spy
    x = torch.randn(50, 48, requires_grad=True)
    w, b = torch.rand(48, requires_grad=True), torch.randn(48, requires_grad=True)
    kernels.fused_layer_norm(x, w, b).sum().backward()
    kernels.fused_layer_norm(x, None, None).sum().backward()
    kernels.column_sum(torch.randn(30, 20))
    sys.path.insert(0, str(ROOT / "tests"))
    from test_attention_kernel import _maps
    _, maps = _maps([45, 15], 16, torch.randperm(60))
    qkv = torch.randn(60, 96).half().requires_grad_()
    attention_kernel.patch_attention(qkv, 2, 0.25, *maps).float().sum().backward()
    kernels._on_cpu = True
    s, h = torch.randn(40, 48, requires_grad=True), torch.randn(40, 48).half().requires_grad_()
    kernels.residual_drop_path(s, h, 0.2).sum().backward()
    x = torch.randn(10, 48).half().requires_grad_()
    kernels.cell_max(x, torch.randperm(10), torch.tensor([0, 4, 10])).float().sum().backward()
    kernels.gelu_recompute_backward(x.detach(), x.detach())
    kernels._on_cpu = False
    assert set(seen) == {"_ln_fwd", "_ln_bwd", "_col_sum", "_pa_fwd", "_pa_delta", "_pa_dkdv", "_pa_dq", "_res_drop_fwd",
                         "_res_drop_bwd", "_cell_max_fwd", "_cell_max_bwd", "_gelu_bwd"}, seen
    print(seen)


def check_arg_key():
    "Arguments with equal `_arg_key` get equal specializations from the installed Triton (the key is at least as fine)"
    import torch
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    from sonata_nb import kernels
    base = torch.zeros(64, dtype=torch.float16)
    values = [1, 0, 2, 15, 16, 17, 32, 2**31 - 16, 2**31 - 1, 2**31, 2**32, -1, -16, -2**31, -2**31 - 1, 2**63 - 1, 2**63 - 16,
              True, False, 0.5, 1.0, None, base, base[1:], base[8:], base[3:], base.float(), torch.zeros(3, dtype=torch.int64)]
    groups = {}
    for v in values:
        for align in (True, False):
            spec = str(native_specialize_impl(BaseBackend, v, False, True, align))
            groups.setdefault((kernels._arg_key(v), align), set()).add(spec)
    coarse = {k: g for k, g in groups.items() if len(g) > 1}
    assert not coarse, coarse
    print(len(groups), "keys, each one specialization")


def check_launch_cache():
    "The direct launch, with a stand-in compiled kernel: one Triton launch per key, then `run` with every argument in order"
    import torch
    from sonata_nb import kernels
    assert not kernels.interpreted()
    runs, firsts = [], []
    class Compiled:
        function, packed_metadata = "fn", "meta"
        def run(self, *a): runs.append(a)
    class Param:
        def __init__(self, c): self.is_constexpr = c
    class Fn:
        arg_names = ["X", "N", "eps", "BLOCK"]
        params = [Param(False), Param(False), Param(False), Param(True)]
        def __getitem__(self, grid):
            def first(*args, **kwargs): firsts.append((grid, args, kwargs)); return Compiled()
            return first
    torch.cuda.current_device = lambda: 0
    kernels._current_stream = lambda device: 1234
    lau = kernels.Launcher(Fn())
    x = torch.zeros(64, dtype=torch.float16)
    lau[(3,)](x, 100, 1e-5, BLOCK=64, num_warps=4)
    assert len(firsts) == 1 and not runs
    lau[(5, 2)](x, 100, 1e-5, BLOCK=64, num_warps=4)
    assert len(firsts) == 1 and runs == [(5, 2, 1, 1234, "fn", "meta", None, None, None, x, 100, 1e-5, 64)], runs
    # what Triton specialises on makes a new key: alignment, an int equal to 1 or divisible by 16, dtype, a constexpr
    for args, kw in [((x[1:], 100, 1e-5), {}), ((x, 1, 1e-5), {}), ((x, 96, 1e-5), {}), ((x.float(), 100, 1e-5), {}),
                     ((x, 100, 1e-5), dict(BLOCK=32))]:
        n = len(firsts)
        lau[(1,)](*args, **{**dict(BLOCK=64, num_warps=4), **kw})
        assert len(firsts) == n + 1, (args, kw)
    lau[(1,)](x[8:], 101, 2.0, BLOCK=64, num_warps=4)  # aligned again, other values of the same kinds: the first key
    assert len(firsts) == 6 and len(runs) == 2
    # runtime arguments passed by keyword are keyed as positional ones: one key for N=300 and N=301
    lau[(1,)](x, N=300, eps=0.5, BLOCK=64, num_warps=4); lau[(1,)](x, N=301, eps=0.25, BLOCK=64, num_warps=4)
    assert len(firsts) == 7 and len(runs) == 3 and runs[-1][-4:] == (x, 301, 0.25, 64), runs[-1]
    kernels.set_fast_launch(False)
    lau[(1,)](x, 100, 1e-5, BLOCK=64, num_warps=4)
    assert len(firsts) == 8 and len(runs) == 3
    print("launch cache ok")


def check_compile():
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from sonata_nb import kernels
    assert not kernels.interpreted()
    expected = os.environ.get("SONATA_EXPECT_TRITON")  # the older Triton put first on the path
    assert expected in (None, triton.__version__), f"Triton {triton.__version__} imported, {expected} expected"
    if "nvidia" not in triton.backends.backends: print("no NVIDIA backend in this Triton: nothing compiled"); return
    def compile(fn, sig, consts, C):  # as launched: the backward with its own blocks
        br, bc, nw = kernels._row_blocks("ln_fwd" if fn is kernels._ln_fwd else "ln_bwd", C)[:3]
        consts = dict(consts, BLOCK_R=br, BLOCK_C=bc)
        sig = {**sig, **{k: "constexpr" for k in consts}}
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                           options=dict(num_warps=nw))
        assert ".entry" in k.asm["ptx"]
    common = dict(Mean="*fp32", Rstd="*fp32", N="i32", C="i32")
    plain_fwd, plain_bwd = dict(R=None, HAS_R=False, ROUND=0, NO_FMA=True), dict(DS=None, HAS_DS=False, NO_FMA=True, DXp=None, HAS_XS=False)
    for C in (48, 384, 1232):  # 384: a width of ROW_BY_WIDTH["ln_bwd"]
        for x, y in (("fp32", "fp32"), ("fp16", "fp32"), ("fp32", "fp16"), ("bf16", "bf16")):
            compile(kernels._ln_fwd, dict(X=f"*{x}", W="*fp32", B="*fp32", Y=f"*{y}", eps="fp32", **common),
                    dict(HAS_W=True, HAS_B=True, RTNE_BF16=False, **plain_fwd), C)
            compile(kernels._ln_bwd, dict(X=f"*{x}", W="*fp32", DY=f"*{y}", DX=f"*{x}", DWp="*fp32", DBp="*fp32", iters="i32", **common),
                    dict(HAS_W=True, HAS_B=True, RTNE_BF16=False, **plain_bwd), C)
        compile(kernels._ln_fwd, dict(X="*fp32", Y="*fp32", eps="fp32", **common),
                dict(W=None, B=None, HAS_W=False, HAS_B=False, RTNE_BF16=False, **plain_fwd), C)
        compile(kernels._ln_bwd, dict(X="*fp32", DY="*fp32", DX="*fp32", iters="i32", **common),
                dict(W=None, DWp=None, DBp=None, HAS_W=False, HAS_B=False, RTNE_BF16=False, **plain_bwd), C)
        for x, r, rnd in (("fp16", "fp32", 0), ("fp16", "fp16", 1), ("bf16", "bf16", 2)):  # residual + norm; the stream's gradient added
            compile(kernels._ln_fwd, dict(X=f"*{x}", W="*fp32", B="*fp32", R=f"*{r}", Y=f"*{r}", eps="fp32", **common),
                    dict(HAS_W=True, HAS_B=True, RTNE_BF16=False, HAS_R=True, ROUND=rnd, NO_FMA=True), C)
            compile(kernels._ln_bwd, dict(X=f"*{r}", W="*fp32", DY=f"*{r}", DS=f"*{r}", DX=f"*{r}", DWp="*fp32", DBp="*fp32",
                                          iters="i32", **common), dict(HAS_W=True, HAS_B=True, RTNE_BF16=False, HAS_DS=True, NO_FMA=True,
                                                                       DXp=None, HAS_XS=False), C)
            compile(kernels._ln_bwd, dict(X=f"*{x}", W="*fp32", DY=f"*{r}", DX=f"*{x}", DWp="*fp32", DBp="*fp32", DXp="*fp32",
                                          iters="i32", **common), dict(HAS_W=True, HAS_B=True, RTNE_BF16=False, DS=None, HAS_DS=False,
                                                                       NO_FMA=True, HAS_XS=True), C)  # the CPE's Linear's bias summed
    for dtype in ("fp16", "bf16", "fp32"):
        for C in (48, 1536):
            br, bc = kernels._column_blocks(C)
            consts = dict(BLOCK_R=br, BLOCK_C=bc)
            sig = dict(X=f"*{dtype}", P="*fp32", N="i32", C="i32", stride="i32", rows_per_program="i32", **{k: "constexpr" for k in consts})
            k = triton.compile(ASTSource(fn=kernels._col_sum, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                               options=dict(num_warps=4))
            assert ".entry" in k.asm["ptx"]
    for x, out in (("fp16", "fp32"), ("bf16", "fp32"), ("fp16", "fp16")):
        for C in (48, 512):
            br, bc, nw, _ = kernels._row_blocks("res_drop_fwd", C)
            consts = dict(BLOCK_R=br, BLOCK_C=bc)
            sig = dict(S=f"*{out}", X=f"*{x}", R="*fp32", OUT=f"*{out}", N="i32", C="i32", keep="fp32", scale="fp32",
                       RTNE_X="constexpr", RTNE_OUT="constexpr", **{k: "constexpr" for k in consts})
            k = triton.compile(ASTSource(fn=kernels._res_drop_fwd, signature=sig, constexprs=dict(consts, RTNE_X=False, RTNE_OUT=False)),
                               target=GPUTarget("cuda", 90, 32), options=dict(num_warps=nw))
            assert ".entry" in k.asm["ptx"]
            br, bc, nw, _ = kernels._row_blocks("res_drop_bwd", C)
            consts = dict(BLOCK_R=br, BLOCK_C=bc)
            for has_sum in (False, True):  # the branch's bias summed or not
                sig = dict(DOUT=f"*{out}", R="*fp32", DX=f"*{x}", P="*fp32" if has_sum else "constexpr", N="i32", C="i32", keep="fp32",
                           scale="fp32", iters="i32", RTNE_BF16="constexpr", HAS_SUM="constexpr", **{k: "constexpr" for k in consts})
                k = triton.compile(ASTSource(fn=kernels._res_drop_bwd, signature=sig, constexprs=dict(
                    consts, RTNE_BF16=False, HAS_SUM=has_sum, **({} if has_sum else dict(P=None)))), target=GPUTarget("cuda", 90, 32),
                    options=dict(num_warps=nw))
                assert ".entry" in k.asm["ptx"]
    bm, bc = kernels.CELL_TILE
    for x in ("fp16", "bf16", "fp32"):
        for sixteens, store in ((True, True), (False, False), (True, False)):  # C a multiple of 16 or not, as launches specialize it
            aligned = lambda sig: {(i,): [["tt.divisibility", 16]] for i, (k, v) in enumerate(sig.items())
                                   if v.startswith("*") or (k == "C" and sixteens)}  # 16-byte pointers, C as launched
            consts = dict(STORE_ARG=store, BLOCK_M=bm, BLOCK_C=bc)
            sig = dict(X=f"*{x}", Perm="*i64", Ptr="*i64", Out=f"*{x}", Arg="*i32" if store else f"*{x}", M="i32", C="i32")
            k = triton.compile(ASTSource(fn=kernels._cell_max_fwd, signature=dict(sig, **{k: "constexpr" for k in consts}),
                                         constexprs=consts, attrs=aligned(sig)), target=GPUTarget("cuda", 90, 32))
            assert ".entry" in k.asm["ptx"]
            consts = dict(BLOCK_M=bm, BLOCK_C=bc)
            sig = dict(G=f"*{x}", Arg="*i32", DX=f"*{x}", M="i32", C="i32")
            k = triton.compile(ASTSource(fn=kernels._cell_max_bwd, signature=dict(sig, **{k: "constexpr" for k in consts}),
                                         constexprs=consts, attrs=aligned(sig)), target=GPUTarget("cuda", 90, 32))
            assert ".entry" in k.asm["ptx"]
            sig = dict(X=f"*{x}", Perm="*i64", Ptr="*i64", Out="*fp32", M="i32", C="i32", s_x="i32")
            k = triton.compile(ASTSource(fn=kernels._cell_sum, signature=dict(sig, **{k: "constexpr" for k in consts}),
                                         constexprs=consts, attrs=aligned(sig)), target=GPUTarget("cuda", 90, 32))
            assert ".entry" in k.asm["ptx"]
            for out, has_row in (("fp16", True), ("bf16", False), ("fp32", True)):  # the up-cast's gather into its columns
                c2 = dict(consts, HAS_ROW=has_row, RTNE_BF16=False)
                sig = dict(X=f"*{x}", Row="*i64" if has_row else f"*{x}", Out=f"*{out}", N="i32", C="i32", s_out="i32")
                k = triton.compile(ASTSource(fn=kernels._gather_rows, signature=dict(sig, **{k: "constexpr" for k in c2}),
                                             constexprs=c2, attrs=aligned(sig)), target=GPUTarget("cuda", 90, 32))
                assert ".entry" in k.asm["ptx"]
    for x in ("fp16", "bf16", "fp32"):  # libdevice's erf and exp linked
        for C, has_sum in ((1536, True), (48, False)):
            br, bc = kernels._column_blocks(C)
            consts = dict(HAS_SUM=has_sum, LIBDEVICE=True, RTNE_BF16=False, BLOCK_R=br, BLOCK_C=bc)
            sig = dict(DA=f"*{x}", H=f"*{x}", A=f"*{x}", DH=f"*{x}", P="*fp32", N="i32", C="i32", rows_per_program="i32",
                       **{k: "constexpr" for k in consts})
            k = triton.compile(ASTSource(fn=kernels._gelu_bwd, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                               options=dict(num_warps=4))
            assert ".entry" in k.asm["ptx"]
    from sonata_nb import serialization as S
    tables = {f"{t}{l}": "*i64" for l in (1, 2, 3) for t in ("D", "N")}
    for g, b, depth, kinds, rows, batch in (("i64", "i64", 16, 0b11100100, 4, True), ("i32", "i32", 9, 0b0111, 2, False)):
        first = depth % 3 or 3
        consts = dict(DEPTH=depth, FIRST=first, CHUNKS=(depth - first) // 3, HAS_BATCH=batch, KINDS=kinds, ROWS=rows, BLOCK=1024)
        sig = dict(G=f"*{g}", Bt=f"*{b}", Out="*i64", N="i32", **tables, **{k: "constexpr" for k in consts})
        k = triton.compile(ASTSource(fn=S._encode_kernel, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32))
        assert ".entry" in k.asm["ptx"]
    print("compiled for sm_90")


def check_serialization():
    exec(open(ROOT / "tests" / "serialization_kernel_check.py").read(), {"__name__": "check"})


def check_env_on():
    from sonata_nb import model
    assert model._fused_layernorm is True


def check_env_off():
    from sonata_nb import model
    assert model._fused_layernorm is False


def check_no_triton():
    sys.modules["triton"] = None  # `import triton` raises ImportError, as where it is not installed
    import torch
    from sonata_nb import kernels, model
    assert not kernels.available() and not kernels.interpreted()
    try: kernels.fused_layer_norm(torch.randn(3, 4))
    except RuntimeError as e: assert "pip install triton" in str(e), e
    else: raise AssertionError("fused_layer_norm ran without triton")
    assert model._fused_layernorm  # the default, and without Triton torch's layer_norm runs
    ln, x = model.LayerNorm(4), torch.randn(3, 4)
    torch.testing.assert_close(ln(x), torch.nn.functional.layer_norm(x, (4,), ln.weight, ln.bias), rtol=0, atol=0)


def check_upcast():
    import torch
    from sonata_nb import kernels, model
    from sonata_nb.model import PointTransformerV3, upcast
    from sonata_nb.testing import toy_cloud
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_model import TINY
    assert model._upcast_kernels  # on by default (CUDA test passed, H100 2026-12-07 14:53)
    kernels._on_cpu = True
    torch.manual_seed(0)
    m = PointTransformerV3(**{**TINY, **UPCAST_WIDE}).eval()
    out, feats = upcast_leaves(m, toy_cloud(n=400, clouds=2, grid=0.1))
    launched, real = [], kernels.launcher
    kernels.launcher = lambda fn: launched.append(fn) or real(fn)
    try: up = upcast(out, dtype=torch.float16)
    finally: kernels.launcher = real
    assert launched == [kernels._gather_rows] * len(feats), launched  # a kernel per stage
    model.set_upcast_kernels(False)
    assert torch.equal(up, upcast(out, dtype=torch.float16))  # torch's gathers and casts
    model.set_upcast_kernels(True)
    g = torch.randn(up.shape, generator=torch.Generator().manual_seed(1)).half()
    with counting(kernels, "cell_sum") as calls: up.backward(g)
    assert len(calls) == len(feats) - 1, calls  # every stage but the finest (its rows are the output's)
    # the reference: each stage's rows of the float32 columns added one by one from zero, in ascending row order
    chain = [out]
    while "pooling_parent" in chain[-1].keys(): chain.append(chain[-1].pooling_parent)
    col, index = 0, None
    for i in range(len(chain) - 1, -1, -1):  # the finest stage first, as the columns
        stage = chain[i]
        c = stage.feat.shape[1]
        if i < len(chain) - 1: index = chain[i].pooling_inverse if index is None else chain[i].pooling_inverse[index]
        expected = torch.zeros(len(stage.feat), c)
        for j in range(len(up)): expected[j if index is None else index[j]] += g[j, col:col + c].float()
        assert torch.equal(stage.feat.grad, expected), i
        col += c
    print("upcast: cell_sum's sums bit for bit the rows' float32 adds in order")


if __name__ == "__main__":
    globals()[f"check_{sys.argv[1]}"]()
