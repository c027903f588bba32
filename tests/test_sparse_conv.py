"The submanifold convolution as gathers and GEMMs (sonata_nb.sparse_conv) against spconv's, and SubMConv3d's switch"
import os, sys
from functools import partial
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import spconv.pytorch as spconv
from sonata_nb import model as M, sparse_conv as S
from sonata_nb.model import PointTransformerV3, SubMConv3d, upcast
from sonata_nb.sparse_conv import neighbour_table, subm_conv
from sonata_nb.testing import toy_cloud

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_model import TINY

cloud = partial(toy_cloud, n=1500)


def random_cells(n:int, extent:int, batch:int, seed:int=0, device="cpu") -> torch.Tensor:
    "(N, 4) int32 spconv indices: distinct cells of `batch` scenes in a cube of `extent`, shuffled"
    g = torch.Generator().manual_seed(seed)
    cells = torch.unique(torch.cat([torch.randint(0, batch, (n, 1), generator=g),
                                    torch.randint(0, extent, (n, 3), generator=g)], 1), dim=0)
    return cells[torch.randperm(len(cells), generator=g)].int().to(device)


@pytest.fixture
def gather_on_cpu():
    "SubMConv3d takes the `sparse_conv` path with the gathers, on the CPU too (whatever the default backend)"
    before = M._conv_backend
    M._gather_on_cpu = True; M.set_conv_backend("gather")
    try: yield
    finally: M._gather_on_cpu = False; M.set_conv_backend(before)


@pytest.mark.parametrize("k,batch,shape", [(3, 1, (14, 14, 14)), (3, 2, (14, 14, 14)), (5, 2, (14, 14, 14)), (3, 2, (14, 9, 6))])
def test_gather_conv_is_spconvs_function_in_float64(k, batch, shape):
    "Output, input and weight gradients equal spconv's CPU kernels' (Native) in float64, scenes kept apart, any extents"
    idx = random_cells(1500, 14, batch)
    idx = torch.unique(torch.minimum(idx, torch.tensor([batch, *shape]) - 1), dim=0).int()  # within the extents
    x = torch.randn(len(idx), 7, dtype=torch.float64, requires_grad=True)
    conv = spconv.SubMConv3d(7, 5, k, bias=False, indice_key="a", algo=spconv.ConvAlgo.Native).double()
    y = conv(spconv.SparseConvTensor(x, idx, list(shape), batch)).features
    dy = torch.randn_like(y)
    dx, dw = torch.autograd.grad(y, (x, conv.weight), dy)
    w = conv.weight.detach().clone().requires_grad_()
    ours = subm_conv(x, neighbour_table(idx, list(shape), batch, k), w)
    ours_dx, ours_dw = torch.autograd.grad(ours, (x, w), dy)
    torch.testing.assert_close(ours, y, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours_dx, dx, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours_dw, dw, rtol=1e-12, atol=1e-10)


def test_gather_conv_in_row_blocks_is_the_same(monkeypatch):
    "Rows gathered a block at a time (bounded memory): the same output and gradients (to the GEMMs' rounding)"
    idx = random_cells(3000, 12, 2, seed=1)
    table = neighbour_table(idx, [12, 12, 12], 2)
    x = torch.randn(len(idx), 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 3, 3, 3, 8, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(len(idx), 6, dtype=torch.float64)
    whole = (subm_conv(x, table, w), *torch.autograd.grad(subm_conv(x, table, w), (x, w), dy))
    monkeypatch.setattr(S, "GATHER_ELEMENTS", 27 * 8 * 100)  # blocks of 100 rows
    y = subm_conv(x, table, w)
    blocks = (y, *torch.autograd.grad(y, (x, w), dy))
    for a, b in zip(whole, blocks): torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-10)


def test_neighbour_table_checks_its_input():
    idx = random_cells(50, 4, 1)
    with pytest.raises(ValueError, match=r"\(N, 4\)"): neighbour_table(idx[:, 1:], [4, 4, 4], 1)
    with pytest.raises(ValueError, match="overflow"): neighbour_table(idx, [2**21] * 3, 4)
    with pytest.raises(ValueError, match="must share a dtype"):
        subm_conv(torch.randn(len(idx), 3), neighbour_table(idx, [4, 4, 4], 1), torch.randn(2, 3, 3, 3, 3, dtype=torch.float64))


def test_submconv3d_gather_path_matches_spconv_and_shares_the_stage_table(gather_on_cpu):
    "The module on the gather path: spconv's outputs and gradients (float32), one table per indice_key, cached in the tensor"
    torch.manual_seed(0)
    a, b = SubMConv3d(8, 8, 3, bias=True, indice_key="s"), SubMConv3d(8, 8, 3, bias=True, indice_key="s")
    idx = random_cells(2000, 16, 2, seed=2)
    feat = torch.randn(len(idx), 8)
    def run():
        x = feat.clone().requires_grad_()
        sp = spconv.SparseConvTensor(x, idx, [16, 16, 16], 2)
        y = b(a(sp))
        y.features.square().sum().backward()
        res = (y.features, x.grad, a.weight.grad, a.bias.grad, b.weight.grad)
        a.zero_grad(set_to_none=True); b.zero_grad(set_to_none=True)
        return res, y
    ours, y = run()
    assert [k for k in y.indice_dict] == ["s/table3"] and a.gathers(y) and a.map_ready(y)
    assert y.indice_dict["s/table3"][0] is idx  # one table for both convolutions, made for these indices
    M._gather_on_cpu = False
    theirs, y2 = run()
    assert "s/table3" not in y2.indice_dict and not a.gathers(y2)
    for u, v in zip(ours, theirs): torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)


def test_a_kept_table_serves_only_its_own_indices(gather_on_cpu):
    "A sparse tensor that inherits `indice_dict` but holds other points of the same count gets a table of its own"
    conv = SubMConv3d(4, 4, 3, indice_key="s")
    a, b = random_cells(300, 8, 1, seed=1), random_cells(300, 8, 1, seed=2)
    n = min(len(a), len(b)); a, b = a[:n], b[:n]
    sa = spconv.SparseConvTensor(torch.randn(n, 4), a, [8, 8, 8], 1)
    conv(sa)
    sb = spconv.SparseConvTensor(torch.randn(n, 4), b, [8, 8, 8], 1)
    sb.indice_dict = sa.indice_dict  # as spconv's strided convolutions pass it on
    assert not conv.map_ready(sb)
    assert torch.equal(conv.table(sb), neighbour_table(b, [8, 8, 8], 1)) and conv.map_ready(sb)


def test_submconv3d_falls_back_to_spconv_where_the_gather_path_does_not_apply(gather_on_cpu):
    "A strided or dilated convolution is left to spconv (the gather path is submanifold, cubic, dense offsets only)"
    sp = spconv.SparseConvTensor(torch.randn(10, 4), random_cells(10, 4, 1)[:10], [4, 4, 4], 1)
    assert SubMConv3d(4, 4, 3).gathers(sp)
    assert not SubMConv3d(4, 4, 3, dilation=2).gathers(sp)
    assert not SubMConv3d(4, 4, (3, 3, 1)).gathers(sp)
    before = M._conv_backend
    M.set_conv_backend("spconv")
    try: assert not SubMConv3d(4, 4, 3).gathers(sp)
    finally: M.set_conv_backend(before)
    with pytest.raises(ValueError, match="Unknown convolution backend"): M.set_conv_backend("cudnn")


def test_auto_backend_takes_sparse_conv_where_a_half_precision_gradient_flows(gather_on_cpu, monkeypatch):
    "\"auto\" (the default): `sparse_conv` where the weight trains or the input needs a gradient, in half precision with usable kernels; spconv elsewhere"
    assert M.CONV_BACKENDS[0] == "auto"
    monkeypatch.setattr(M, "_conv_backend", "auto")
    # as on a GPU with Triton: half-precision features usable, the dtype asked for recorded
    usable = []
    monkeypatch.setattr(M, "kernel_usable", lambda x: usable.append(x.dtype) or x.dtype in (torch.float16, torch.bfloat16))
    idx = random_cells(50, 6, 1)
    conv = SubMConv3d(4, 4, 3, indice_key="s").half()  # the dtype the convolution runs in without CUDA autocast: the weight's
    feat = spconv.SparseConvTensor(torch.randn(len(idx), 4), idx, [6, 6, 6], 1)
    assert conv.gathers(feat) and usable == [torch.float16]
    with torch.no_grad(): assert not conv.gathers(feat)  # inference
    conv.requires_grad_(False)
    assert not conv.gathers(feat)  # a frozen convolution on features without a gradient (frozen encoders)
    assert conv.gathers(feat.replace_feature(feat.features.requires_grad_()))  # a gradient flows to its input
    conv.requires_grad_(True).float()
    with torch.autocast("cpu", dtype=torch.bfloat16): assert not conv.gathers(feat)  # float32 weight, no CUDA autocast: spconv
    monkeypatch.setattr(M, "kernel_usable", lambda x: False)  # no Triton, or an older GPU: spconv, not the gathers
    assert not conv.half().gathers(feat)


def test_encoder_on_the_gather_path_is_the_same_function(gather_on_cpu):
    "A tiny encoder's output and gradients with the gather path = with spconv's kernels (float32, to rounding)"
    torch.manual_seed(0)
    m = PointTransformerV3(**{**TINY, "drop_path": 0.0})
    data = cloud()
    def run(on):
        M._gather_on_cpu = on
        out = upcast(m(data))
        out.square().mean().backward()
        grads = [p.grad.clone() for p in m.parameters()]
        m.zero_grad(set_to_none=True)
        return out, grads
    ours, theirs = run(True), run(False)
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-4, atol=1e-5)
    for u, v in zip(ours[1], theirs[1]): torch.testing.assert_close(u, v, rtol=1e-3, atol=1e-5)


# --- CUDA ------------------------------------------------------------------------------------------------------

class AtenCalls(TorchDispatchMode):
    "The aten ops run inside it (`names`), the backward's included"
    def __init__(self): super().__init__(); self.names = []
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def passing_is_autograds_sum(kernel, x_dtype, w_dtype, dev="cpu", n=700, ext=10, ci=24, co=40):
    "`subm_conv_passing(x, ...)` and its passed x used as a residual: output and gradients bit for bit those of the cast, `subm_conv` and x used directly (autograd's sum); also with only one of the two outputs used"
    from sonata_nb.sparse_conv import subm_conv_passing
    g = torch.Generator().manual_seed(3)
    idx = random_cells(n, ext, 2, seed=5).to(dev)
    t = neighbour_table(idx, [ext] * 3, 2)
    x0 = (torch.randn(len(idx), ci, generator=g) * 2).to(dev, x_dtype)
    w0 = (torch.randn(co, 3, 3, 3, ci, generator=g) / (27 * ci) ** 0.5).to(dev, w_dtype)
    r = torch.randn(len(idx), ci, generator=g).to(dev, x_dtype)
    g1, g2 = torch.randn(len(idx), co, generator=g).to(dev, w_dtype), torch.randn(len(idx), ci, generator=g).to(dev, x_dtype)
    for use in ("both", "conv", "passed"):
        runs, casts = [], []
        for passing in (True, False):
            x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
            if passing: out, xp = subm_conv_passing(x, t, w, kernel=kernel)
            else: out, xp = subm_conv(x.to(w_dtype), t, w, kernel=kernel), x
            loss = {"both": (out * g1).sum() + ((xp + r) * g2).sum(), "conv": (out * g1).sum(),
                    "passed": ((xp + r) * g2).sum()}[use]
            with AtenCalls() as calls: loss.backward()
            runs.append((out.detach(), x.grad, w.grad))
            casts.append(calls.names.count("_to_copy"))
        for a, b in zip(*runs):
            assert (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b)), (kernel, x_dtype, w_dtype, use)
        # the input gradient's cast to float32 x's dtype is the mixed-dtype add's (one pass less)
        exact = x_dtype != w_dtype and torch.promote_types(x_dtype, w_dtype) == x_dtype
        assert casts[0] == casts[1] - (use == "both" and exact), (use, casts)
    x = x0.clone().requires_grad_()
    out, xp = subm_conv_passing(x, t, w0.clone().requires_grad_(), kernel=kernel)
    loss = (out * g1).sum() + (xp * g2).sum()
    if kernel:  # the kernels' gradients are not differentiable: an error, not a silent constant
        try: torch.autograd.grad(loss, x, create_graph=True)
        except RuntimeError as e: assert "not differentiable" in str(e)
        else: raise AssertionError("create_graph through the kernels")
    else: assert torch.autograd.grad(loss, x, create_graph=True)[0].requires_grad
    assert not subm_conv_passing(x0, t, w0, kernel=kernel)[1].requires_grad  # nothing to differentiate: x as it is


def test_passing_on_the_gathers_is_autograds_sum():
    "The gather path (no kernels): float32 features and weights, and bfloat16 features cast up to float32 weights"
    passing_is_autograds_sum(False, torch.float32, torch.float32)
    passing_is_autograds_sum(False, torch.bfloat16, torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: spconv's implicit-GEMM neighbour maps and kernels")
@pytest.mark.parametrize("amp", [torch.float16, torch.bfloat16, None])
def test_gather_conv_on_cuda_matches_spconv(amp):
    "On CUDA: the table is spconv's implicit-GEMM map; outputs and gradients equal spconv's to half-precision rounding"
    torch.manual_seed(0)
    conv = SubMConv3d(48, 32, kernel_size=3, bias=True, indice_key="k").cuda()
    idx = random_cells(60000, 60, 2, device="cuda")
    feat = torch.randn(len(idx), 48, device="cuda")
    def run(backend):
        M.set_conv_backend(backend)
        try:
            x = feat.clone().requires_grad_()
            sp = spconv.SparseConvTensor(x, idx, [60, 60, 60], 2)
            with torch.autocast("cuda", dtype=amp or torch.float16, enabled=amp is not None): y = conv(sp)
            y.features.float().square().sum().backward()
            res = (y.features, x.grad, conv.weight.grad.clone(), conv.bias.grad.clone())
            conv.zero_grad(set_to_none=True)
            return res, y
        finally: M.set_conv_backend(before)
    before = M._conv_backend
    ours, y = run("gather")
    theirs, y2 = run("spconv")
    table, pair = y.indice_dict["k/table3"][1], y2.indice_dict["k"].pair_fwd
    assert torch.equal(torch.where(table == len(idx), -1, table), pair.t())
    # spconv's forward and input-gradient kernels accumulate in half precision, ours in float32: both against float64
    x64 = feat.double().requires_grad_()
    w64, b64 = conv.weight.detach().double().requires_grad_(), conv.bias.detach().double().requires_grad_()
    with torch.autocast("cuda", enabled=False): y64 = subm_conv(x64, table, w64) + b64
    y64.square().sum().backward()
    exact = (y64, x64.grad, w64.grad, b64.grad)
    for u, v, e in zip(ours, theirs, exact):
        assert u.dtype == v.dtype
        err, ref, scale = ((u.double() - e).abs().max().item(), (v.double() - e).abs().max().item(), e.abs().max().item())
        assert err <= 1.5 * ref + (1e-3 if amp is not None else 1e-6) * scale, (err, ref, scale)


# --- the Triton kernels: in the interpreter (a fresh Python each), compiled for sm_90, on CUDA -------------------

import importlib.util
from compiled import on_cuda
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@needs_triton
@pytest.mark.parametrize("check", ["kernels_match_the_gathers", "module_takes_the_kernels", "passing", "tune_references"])
def test_interpreted(forkserver, check):  # a fresh Python each: the interpreter is chosen before the kernels are defined
    print(forkserver.check(__file__, check))


@needs_triton
def test_kernels_compile_for_the_gpu(forkserver):
    "What only the compiler rejects: both kernels compiled to PTX for sm_90 (float16 and bfloat16, both directions)"
    print(forkserver.check(__file__, "compile", interpret=False))


from compiled import OLDER_TRITONS, older_triton


@needs_triton
@pytest.mark.parametrize("version", OLDER_TRITONS)
def test_kernels_compile_with_older_triton(forkserver, version):
    "The same compile check with torch 2.11's Triton (the GPU machines'), installed beside ours by .ci/run"
    print(forkserver.check(__file__, "compile", interpret=False, **older_triton(version)))


def bias_in_kernel_is_add_after(S, idx, ext, ci, co, dev, g, dtype=torch.float16, k=3):
    "With `set_bias_in_kernel` (on by default), subm_conv with a bias on the kernels = the kernels then `out.add_(bias)` bit for bit: output and every gradient"
    assert S._bias_in_kernel  # on since its CUDA test passed on an H100 (2026-12-07 10:21)
    t = neighbour_table(idx, [ext] * 3, int(idx[:, 0].max()) + 1, k)
    x = torch.randn(len(idx), ci, generator=g).to(dev, dtype).requires_grad_()
    w = (torch.randn(co, k, k, k, ci, generator=g) / (k ** 3 * ci) ** 0.5).to(dev, dtype).requires_grad_()
    b = (torch.randn(2 * co, generator=g) * 3).to(dev)[::2].requires_grad_()  # a strided float32 bias, as autocast trains it
    dy = torch.randn(len(idx), co, generator=g).to(dev, dtype)
    runs = []
    for fused in (True, False):
        y = subm_conv(x, t, w, kernel=True, bias=b) if fused else subm_conv(x, t, w, kernel=True).add_(b)
        runs.append((y, *torch.autograd.grad(y, (x, w, b), dy)))
    for a, b_ in zip(*runs): assert a.dtype == b_.dtype and torch.equal(a, b_)
    db_only, = torch.autograd.grad(subm_conv(x.detach(), t, w.detach(), kernel=True, bias=b), b, dy)  # only the bias trained
    assert torch.equal(db_only, runs[1][3])
    db_kernel, = torch.autograd.grad(subm_conv(x, t, w, kernel=True, bias=b, bias_sum_kernel=True), b, dy)  # column_sum's
    exact = dy.double().sum(0)
    assert db_kernel.dtype == torch.float32 and ((db_kernel.double() - exact).abs() <= 1e-6 * dy.double().abs().sum(0) + 1e-6).all()
    for kernel, bias in ((False, b), (True, b.double())):  # without the kernels; a float64 bias (torch would add in float64)
        try: subm_conv(x, t, w, kernel=kernel, bias=bias)
        except ValueError as e: assert "only in the Triton kernels" in str(e)
        else: raise AssertionError((kernel, bias.dtype))


def check_kernels_match_the_gathers():
    "Forward, input and weight gradients of the kernels = the gathers' (float16, to rounding) and float64's, odd widths, many bands"
    from sonata_nb import sparse_conv as S
    assert S.kernel_usable(torch.zeros(1, dtype=torch.float16))
    S._programs = lambda device: 400  # a GPU's many programs: the weight gradient in several bands of rows
    bands, real = [], S.launcher
    class Spy:  # records the weight-gradient kernel's grids (cell, tile, band)
        def __init__(self, fn): self.fn, self.launch = fn, real(fn)
        def __getitem__(self, grid):
            if self.fn is S._sc_wgrad: bands.append(grid[2])
            return self.launch[grid]
    S.launcher = Spy
    g = torch.Generator().manual_seed(0)
    cases = ((3, 24, 40, 2, 1), (3, 70, 20, 1, 3), (5, 6, 16, 2, 3), (5, 6, 16, 2, 2), (3, 16, 130, 1, 1))
    for k, ci, co, batch, cells in cases:  # cells: the weight-gradient kernel's cells per program (k = 5: 125 cells, a partial group)
        S.CONV_CONFIG["wgrad"] = S.CONV_CONFIG["wgrad"][:-1] + (cells,)
        idx = random_cells(900, 10, batch, seed=k + ci)
        t = neighbour_table(idx, [10, 10, 10], batch, k)
        x = torch.randn(len(idx), ci, generator=g).half().requires_grad_()
        w = (torch.randn(co, k, k, k, ci, generator=g) / (k ** 1.5 * ci) ** 0.5).half().requires_grad_()
        dy = torch.randn(len(idx), co, generator=g).half()
        def run(kernel):
            y = subm_conv(x, t, w, kernel=kernel)
            return (y, *torch.autograd.grad(y, (x, w), dy))
        ours, gathered = run(True), run(False)
        assert ours[0].dtype == torch.float16 and ours[2].dtype == torch.float16
        assert S._triton_weight_grad(dy, x.detach(), t, co, k ** 3, ci).is_contiguous()  # the weight's layout: no copy to accumulate
        x64, w64, dy64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_(), dy.double()
        y64 = subm_conv(x64, t, w64)
        exact = (y64, *torch.autograd.grad(y64, (x64, w64), dy64))
        for name, a, b, e in zip(("y", "dx", "dw"), ours, gathered, exact):
            err, ref = (a.double() - e).abs().max().item(), (b.double() - e).abs().max().item()
            scale = e.abs().max().item()
            assert err <= 2 * ref + 1e-3 * scale, (k, ci, co, name, err, ref, scale)  # as close to float64 as the gathers
            print(k, ci, co, name, f"kernel {err / scale:.2e}, gathers {ref / scale:.2e} of the largest value")
    assert max(bands) > 1, bands
    # a width's own configuration (CONV_BY_WIDTH, keyed by the module's input width): both directions of the
    # convolution and the weight gradient launch with it, and compute the same function
    launched = []
    class Seen(Spy):
        def __getitem__(self, grid):
            launch = Spy.__getitem__(self, grid)
            def run(*args, **kw):
                launched.append((self.fn is S._sc_wgrad, kw["BLOCK_I"], kw["BLOCK_O"], kw.get("CELLS")))
                return launch(*args, **kw)
            return run
    S.launcher, saved = Seen, {k: dict(v) for k, v in S.CONV_BY_WIDTH.items()}
    S.CONV_BY_WIDTH.update(conv={24: (64, 16, 16, 4, 2)}, wgrad={24: (64, 16, 16, 4, 2, 8, 1)})
    idx = random_cells(500, 9, 2, seed=11)
    t = neighbour_table(idx, [9] * 3, 2)
    x = torch.randn(len(idx), 24, generator=g).half().requires_grad_()
    w = (torch.randn(40, 3, 3, 3, 24, generator=g) / (27 * 24) ** 0.5).half().requires_grad_()
    dy = torch.randn(len(idx), 40, generator=g).half()
    ours = [subm_conv(x, t, w, kernel=True)]
    ours += torch.autograd.grad(ours[0], (x, w), dy)
    assert sorted(launched) == [(False, 16, 16, None)] * 2 + [(True, 16, 16, 1)], launched
    gathered = [subm_conv(x, t, w, kernel=False)]
    gathered += torch.autograd.grad(gathered[0], (x, w), dy)
    for a, b in zip(ours, gathered): assert (a.double() - b.double()).abs().max() <= 2e-2 * b.double().abs().max()
    S.CONV_BY_WIDTH.update(saved)
    S.launcher = real
    bias_in_kernel_is_add_after(S, random_cells(900, 10, 2, seed=7), 10, 24, 40, "cpu", g)
    bias_in_kernel_is_add_after(S, random_cells(600, 9, 1, seed=8), 9, 150, 140, "cpu", g)  # several channel chunks and column programs
    bias_in_kernel_is_add_after(S, random_cells(400, 8, 2, seed=9), 8, 6, 16, "cpu", g, k=5)


def check_module_takes_the_kernels():
    "SubMConv3d on float16 features takes the kernels with the \"triton\" backend, the gathers with \"gather\": the same outputs"
    from sonata_nb import model as M, sparse_conv as S
    M._gather_on_cpu = True
    torch.manual_seed(0)
    conv = SubMConv3d(16, 16, 3, bias=True, indice_key="s").half()
    idx = random_cells(800, 10, 1)
    sp = spconv.SparseConvTensor(torch.randn(len(idx), 16).half(), idx, [10, 10, 10], 1)
    calls, real = [], S._triton_conv
    S._triton_conv = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        M.set_conv_backend("triton"); on = conv(sp).features
        assert calls
        M.set_conv_backend("gather"); off = conv(sp).features
        assert len(calls) == 1
    finally: S._triton_conv = real; M.set_conv_backend("spconv")
    assert torch.allclose(on.float(), off.float(), atol=2e-2, rtol=1e-2)
    # the bias in the kernel (set_bias_in_kernel): the module's output and every gradient bit for bit (torch's bias sum);
    # with set_fused_bias_grad (on by default) the bias gradient is column_sum's float32 sum, every other one the same
    from sonata_nb import kernels as K
    assert K._fused_bias_grad
    M.set_conv_backend("triton")
    runs, sums, real_sum = [], [], S.column_sum
    dy = torch.linspace(-1, 1, len(idx) * 16).reshape(-1, 16).half()
    S.column_sum = lambda t: sums.append(len(runs)) or real_sum(t)
    try:
        for fused, fused_bias in ((True, False), (False, False), (True, True)):
            S.set_bias_in_kernel(fused); K.set_fused_bias_grad(fused_bias)
            x = sp.features.clone().requires_grad_()
            out = conv(sp.replace_feature(x)).features
            out.backward(dy)
            runs.append((out.detach(), x.grad, conv.weight.grad.clone(), conv.bias.grad.clone()))
            conv.zero_grad(set_to_none=True)
            assert (out.grad_fn.name() == "SubmanifoldConvBackward") == fused  # no add after the kernel, or the add
    finally: S.set_bias_in_kernel(True); K.set_fused_bias_grad(True); M.set_conv_backend("spconv"); S.column_sum = real_sum
    for a, b in zip(runs[0], runs[1]): assert torch.equal(a, b)
    for a, b in zip(runs[2][:3], runs[1][:3]): assert torch.equal(a, b)
    assert sums == [2] and torch.equal(runs[2][3], real_sum(dy).half()), sums  # only the third run's bias sum


def check_passing():
    "The kernels: float32 features cast to float16 (the stream added by one mixed-dtype add), float16, bfloat16 (cast back first, then added); a Block with `set_conv_stream` bit for bit"
    passing_is_autograds_sum(True, torch.float32, torch.float16)
    passing_is_autograds_sum(True, torch.float16, torch.float16)
    passing_is_autograds_sum(True, torch.bfloat16, torch.float16)
    from sonata_nb import kernels as K
    M._gather_on_cpu = M._fused_on_cpu = K._on_cpu = True  # the interpreted kernels on CPU tensors
    M.set_conv_backend("triton")
    assert M._conv_stream  # on by default (measured faster on an H100, 2026-12-07 14:33)
    torch.manual_seed(0)
    block = M.Block(48, 3, patch_size=64, cpe_indice_key="stage0", drop_path=0.3).half().train()
    data = cloud(n=300, clouds=2, grid=0.1)
    data["feat"] = torch.randn(len(data["coord"]), 48).half()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_kernels import both_ways, same_runs
    runs, calls = both_ways(block, data, None, M.set_conv_stream, True, M, "subm_conv_passing")
    assert len(calls) == 1, calls  # the switched run's convolution
    same_runs(runs)
    print("passing: bit for bit autograd's sum; a half-precision Block with set_conv_stream bit for bit")


def check_tune_references():
    "bench/conv_tune.py's references are the convolution's function (float32 autograd of the gathers) and catch a wrong kernel"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import conv_tune as CT
    g = torch.Generator().manual_seed(0)
    idx = random_cells(300, 10, 1)
    t = neighbour_table(idx, [10] * 3, 1)
    for ci, co in ((16, 16), (48, 32)):
        x, dy = torch.randn(len(idx), ci, generator=g).half(), torch.randn(len(idx), co, generator=g).half()
        w = (torch.randn(co, 27, ci, generator=g) / (27 * ci) ** 0.5).half()
        refs = CT.references(x, t, w, dy)
        xx, ww = x.float().requires_grad_(), w.float().requires_grad_()
        S.gather_matmul(xx, t, ww.reshape(co, -1)).backward(dy.float())
        for got, exact in zip(refs, (None, xx.grad, ww.grad)):
            if exact is not None: assert CT.rel_err(got, exact) < 2e-3, (ci, co, CT.rel_err(got, exact))
        for kind in ("conv", "wgrad"):
            assert CT.config_error(kind, x, t, w, dy, refs) < CT.TOLERANCE
            assert CT.config_error(kind, x, t.flip(1), w, dy, refs) > CT.TOLERANCE  # the cells in the wrong order: caught
    print("conv_tune's references: autograd's gradients; the kernels within its tolerance, cells in the wrong order not")


def check_compile():
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from sonata_nb import sparse_conv as S
    expected = os.environ.get("SONATA_EXPECT_TRITON")  # the older Triton put first on the path
    assert expected in (None, triton.__version__), f"Triton {triton.__version__} imported, {expected} expected"
    for dt in ("fp16", "bf16"):
        for flip, bias in ((False, False), (True, False), (False, True)):  # the forward with the bias in its epilogue too
            sig = dict(X=f"*{dt}", T="*i32", W=f"*{dt}", Y=f"*{dt}", B="*fp32" if bias else "constexpr", N="i32", CI="i32",
                       CO="i32", K="i32", s_in="i32", s_out="i32", FLIP="constexpr", HAS_B="constexpr", BLOCK_M="constexpr",
                       BLOCK_I="constexpr", BLOCK_O="constexpr", FLAT="constexpr")
            consts = dict(FLIP=flip, HAS_B=bias, BLOCK_M=128, BLOCK_I=64, BLOCK_O=64, FLAT=False, **({} if bias else dict(B=None)))
            triton.compile(ASTSource(fn=S._sc_conv, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32))
            # as the model launches it: 16-byte pointers, channels multiples of 16, the weight's unit stride a constant 1;
            # at the pipeline depths bench/conv_tune.py sweeps, the gathers must be copied ahead asynchronously (pipelined)
            one, other = ("s_out", "s_in") if flip else ("s_in", "s_out")
            sig1 = dict(sig, **{one: "constexpr"})
            attrs = {(i,): [["tt.divisibility", 16]] for i, (k, v) in enumerate(sig1.items())
                     if v.startswith("*") or k in ("CI", "CO", other)}
            for stages, flat in ((2, False), (3, False), (2, True), (3, True)):  # both loops: nested (several chunks), flat
                k = triton.compile(ASTSource(fn=S._sc_conv, signature=sig1, constexprs=dict(consts, BLOCK_O=128, FLAT=flat, **{one: 1}),
                                             attrs=attrs), target=GPUTarget("cuda", 90, 32), options=dict(num_warps=8, num_stages=stages))
                assert "async_copy_global_to_local" in k.asm["ttgir"], (dt, flip, bias, stages, flat)
            for c in S.CONV_BY_WIDTH["conv"] if dt == "fp16" else ():  # each width's own, as launched (c channels in and out)
                bm, bi, bo, flat, warps, stages = S._conv_blocks(c, c, c)
                k = triton.compile(ASTSource(fn=S._sc_conv, signature=sig1, attrs=attrs, constexprs=dict(
                    consts, BLOCK_M=bm, BLOCK_I=bi, BLOCK_O=bo, FLAT=flat, **{one: 1})), target=GPUTarget("cuda", 90, 32),
                    options=dict(num_warps=warps, num_stages=stages))
                assert "async_copy_global_to_local" in k.asm["ttgir"], (c, flip, bias)
        for cells in (1, 3):
            sig = dict(X=f"*{dt}", T="*i32", DY=f"*{dt}", P="*fp32", N="i32", CI="i32", CO="i32", K="i32", band="i32",
                       BLOCK_M="constexpr", BLOCK_I="constexpr", BLOCK_O="constexpr", CELLS="constexpr")
            triton.compile(ASTSource(fn=S._sc_wgrad, signature=sig, constexprs=dict(BLOCK_M=64, BLOCK_I=64, BLOCK_O=64, CELLS=cells)),
                           target=GPUTarget("cuda", 90, 32))
        for c in S.CONV_BY_WIDTH["wgrad"]:  # each width's own, as launched
            bm, bi, bo, warps, stages, _, cells = S._wgrad_blocks(c, c)
            consts = dict(BLOCK_M=bm, BLOCK_I=bi, BLOCK_O=bo, CELLS=cells)
            attrs = {(i,): [["tt.divisibility", 16]] for i, (k, v) in enumerate(sig.items()) if v.startswith("*") or k in ("CI", "CO")}
            triton.compile(ASTSource(fn=S._sc_wgrad, signature=sig, constexprs=consts, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                           options=dict(num_warps=warps, num_stages=stages))
    print("compiled for sm_90")


@on_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conv_kernels_on_cuda_match_the_gathers(dtype):
    "On CUDA: the kernels' output and gradients as close to float64 as the gathers' (a stage-0-like and a stage-3-like width)"
    from sonata_nb import sparse_conv as S
    g = torch.Generator().manual_seed(0)
    for n, ext, ci, co in ((120000, 80, 48, 48), (8000, 30, 384, 384)):
        idx = random_cells(n, ext, 2, device="cuda")
        t = neighbour_table(idx, [ext] * 3, 2)
        x = torch.randn(len(idx), ci, generator=g).to("cuda", dtype).requires_grad_()
        w = (torch.randn(co, 3, 3, 3, ci, generator=g) / (27 * ci) ** 0.5).to("cuda", dtype).requires_grad_()
        dy = torch.randn(len(idx), co, generator=g).to("cuda", dtype)
        def run(kernel):
            y = subm_conv(x, t, w, kernel=kernel)
            return (y, *torch.autograd.grad(y, (x, w), dy))
        ours, gathered = run(True), run(False)
        x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
        y64 = subm_conv(x64, t, w64)
        exact = (y64, *torch.autograd.grad(y64, (x64, w64), dy.double()))
        for a, b, e in zip(ours, gathered, exact):
            assert a.dtype == b.dtype
            assert (a.double() - e).abs().max() <= 2 * (b.double() - e).abs().max() + 1e-3 * e.abs().max()
        bias_in_kernel_is_add_after(S, idx, ext, ci, co, "cuda", g, dtype)


if __name__ == "__main__":
    globals()[f"check_{sys.argv[1]}"]()


@on_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_conv_stream_on_cuda_is_bitwise(dtype):
    "On CUDA: subm_conv_passing's gradients are autograd's sum bit for bit; a training Block under autocast with `set_conv_stream`: output and every gradient bit for bit"
    passing_is_autograds_sum(True, torch.float32, dtype, dev="cuda", n=20000, ext=40, ci=96, co=96)
    passing_is_autograds_sum(True, dtype, dtype, dev="cuda")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_kernels import both_ways, cuda_block, same_runs
    block, data = cuda_block()
    backend = M._conv_backend
    M.set_conv_backend("auto")
    try: runs, calls = both_ways(block, data, dtype, M.set_conv_stream, M._conv_stream, M, "subm_conv_passing")
    finally: M.set_conv_backend(backend)
    assert len(calls) == 1, calls
    same_runs(runs)


@pytest.mark.parametrize("train", [False, True])
def test_gather_path_reads_nothing_from_the_device_with_a_host_plan(gather_on_cpu, train):
    "The neighbour tables are built without a device read or a blocking copy: a forward with a HostPlan still reads nothing"
    from test_model import HostReads
    from sonata_nb.model import HostPlan, pooling_strides
    from sonata_nb.runtime import to_device
    torch.manual_seed(0)
    m = PointTransformerV3(**TINY).train(train)
    data = cloud()
    batch = to_device({**data, "_host_plan": HostPlan(data, pooling_strides(m))}, torch.device("cpu"))
    with HostReads() as reads: out = m(batch)
    if train: out.feat.sum().backward()
    assert reads.sites == []
    assert any(k.endswith("/table3") for k in out.sparse_conv_feat.indice_dict)  # the gather path ran
