"Mechanism tests of the PT-v3m2 backbone (sonata_nb.model): structure, keys, pooling, determinism, up-cast, real scan."
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sonata_nb.model import (SONATA_CONFIG, Block, DropPath, GridPooling, PointTransformerV3, SubMConv3d, upcast)
from sonata_nb.serialization import encode
from sonata_nb.structure import Point
from sonata_nb.testing import toy_cloud

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_kernels import block_step, both_ways, counting, same_runs  # a Block's training step and its A/B, a call counter, bitwise comparison (shared with the kernel checks)

SCAN = Path(__file__).resolve().parents[2] / "shared/data/scannet_raw/scans/scene0000_00/scene0000_00_vh_clean_2.ply"
TINY = dict(in_channels=9, order=("z", "z-trans", "hilbert", "hilbert-trans"), stride=(2, 2, 2),
            enc_depths=(1, 1, 1, 2), enc_channels=(8, 16, 16, 32), enc_num_head=(2, 2, 2, 4),
            enc_patch_size=(32, 32, 32, 32), dec_depths=(1, 1, 1), dec_channels=(8, 16, 16),
            dec_num_head=(2, 2, 2), dec_patch_size=(32, 32, 32), shuffle_orders=False, enc_mode=True)


cloud = partial(toy_cloud, n=1500)  # the model notebook's toy rooms (sonata_nb.testing), smaller


def stages(point):
    "Points from the coarsest stage back to stage 0"
    out = [point]
    while "pooling_parent" in out[-1]: out.append(out[-1].pooling_parent)
    return out


# --- structure -------------------------------------------------------------------------------------------------

# The released key lists (tests/fixtures) and the registry are checked in nbs/04_model.ipynb.


def test_bad_configs_raise_clear_errors():
    with pytest.raises(NotImplementedError, match="enable_rpe"): PointTransformerV3(**{**TINY, "enable_rpe": True})
    with pytest.raises(ValueError, match="stride has 2 entries, expected 3"): PointTransformerV3(**{**TINY, "stride": (2, 2)})
    with pytest.raises(ValueError, match="dec_channels has 2"):
        PointTransformerV3(**{**TINY, "enc_mode": False, "dec_channels": (8, 16)})
    with pytest.raises(TypeError, match="grid_size"): PointTransformerV3(**TINY, grid_size=0.02)
    with pytest.raises(ValueError, match="expects 9 input features"): PointTransformerV3(**TINY)({**cloud(), "feat": torch.zeros(3000, 6)})


def test_drop_path_schedules_follow_the_reference():
    cfg = {**TINY, "enc_mode": False, "drop_path": 0.4}
    m = PointTransformerV3(**cfg)
    rate = lambda b: b.drop_path[0].drop_prob if isinstance(b.drop_path[0], DropPath) else 0.0
    enc = [rate(b) for s in m.enc._modules.values() for b in s._modules.values() if isinstance(b, Block)]
    assert enc == pytest.approx(torch.linspace(0, 0.4, 5).tolist())
    dec = {name: [rate(b) for b in s._modules.values() if isinstance(b, Block)] for name, s in m.dec._modules.items()}
    full = torch.linspace(0, 0.4, 3).tolist()  # dec_depths (1,1,1): stage s gets entry s
    assert dec == {"dec2": [pytest.approx(full[2])], "dec1": [pytest.approx(full[1])], "dec0": [pytest.approx(full[0])]}


def test_freeze_encoder_trains_only_the_decoder():
    torch.manual_seed(0)
    m = PointTransformerV3(**{**TINY, "enc_mode": False, "freeze_encoder": True}).train()
    m(cloud()).feat.square().mean().backward()
    for name, p in m.named_parameters():
        if name.startswith(("embedding", "enc.")): assert not p.requires_grad and p.grad is None, name
        else: assert p.requires_grad and p.grad is not None and torch.isfinite(p.grad).all(), name


def test_decoder_returns_stage0_features_and_backpropagates():
    torch.manual_seed(0)
    data = cloud()
    m = PointTransformerV3(**{**TINY, "enc_mode": False, "traceable": True, "drop_path": 0.3}).train()
    out = m(data)
    assert out.feat.shape == (len(data["coord"]), 8)
    assert torch.equal(out.coord, data["coord"])  # stage 0 rows are the input rows
    assert "pooling_parent" not in out and out.unpooling_parent.feat.shape[1] == 16
    out.feat.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_subm_conv_runs_on_cpu_in_train_and_eval_mode_with_gradients():
    conv = SubMConv3d(3, 4, kernel_size=3, bias=True, indice_key="k")
    idx = torch.unique(torch.randint(0, 5, (30, 3)), dim=0)
    feats = torch.randn(len(idx), 3, requires_grad=True)
    x = Point(feat=feats, grid_coord=idx, batch=torch.zeros(len(idx), dtype=torch.long))
    x.sparsify()
    y = conv(x.sparse_conv_feat).features
    y.sum().backward()
    assert feats.grad is not None and conv.weight.grad.shape == (4, 3, 3, 3, 3) and conv.bias.grad is not None
    with torch.no_grad(): assert torch.allclose(conv.eval()(x.sparse_conv_feat).features, y, atol=1e-6)


# --- pooling ---------------------------------------------------------------------------------------------------

def test_grid_pooling_matches_a_brute_force_per_cell_reduction():
    torch.manual_seed(0)
    data = cloud(n=600)
    p = Point({k: v.clone() for k, v in data.items()}, color=torch.rand(len(data["coord"]), 3), name="scene")
    p.feat = torch.randn(len(p.coord), 8)
    p.serialization(order=("z",)); p.sparsify()
    pool = GridPooling(8, 16, stride=2, shuffle_orders=False)
    with torch.no_grad(): q = pool(p); proj = pool.proj(p.feat)
    cells = {}
    for i, key in enumerate(zip(p.batch.tolist(), *(p.grid_coord // 2).T.tolist())): cells.setdefault(key, []).append(i)
    keys = sorted(cells)
    assert len(q.feat) == len(keys) and q.name == "scene"
    assert [tuple(r) for r in torch.cat([q.batch[:, None], q.grid_coord], 1).tolist()] == keys
    for c, key in enumerate(keys):
        rows = torch.tensor(cells[key])
        assert torch.equal(q.pooling_inverse[rows], torch.full((len(rows),), c))
        assert torch.allclose(q.feat[c], F.gelu(F.layer_norm(proj[rows].max(0).values, (16,), pool.norm[0].weight, pool.norm[0].bias)), atol=1e-5)
        assert torch.allclose(q.coord[c], p.coord[rows].mean(0), atol=1e-6)
        assert torch.allclose(q.color[c], p.color[rows].mean(0), atol=1e-6)
    assert q.offset.tolist() == torch.bincount(q.batch).cumsum(0).tolist()
    assert q.sparse_conv_feat.features.shape == (len(keys), 16)


def test_grid_pooling_gradient_reaches_the_max_rows():
    p = Point(feat=torch.randn(6, 4, requires_grad=True), coord=torch.zeros(6, 3),
              grid_coord=torch.tensor([[0, 0, 0], [1, 1, 1], [2, 0, 0], [3, 1, 1], [0, 0, 1], [5, 5, 5]]),
              offset=torch.tensor([6]))
    p.serialization(order=("z",)); p.sparsify()
    q = GridPooling(4, 3, stride=2, shuffle_orders=False)(p)
    q.feat.sum().backward()
    assert p.feat.grad.abs().sum() > 0 and torch.isfinite(p.feat.grad).all()


# --- serialization orders --------------------------------------------------------------------------------------

def order_rows(point, orders):
    "Index in `orders` of each row of the point's serialized_code"
    codes = [encode(point.grid_coord, point.batch, point.serialized_depth, order=o) for o in orders]
    return [next(i for i, c in enumerate(codes) if torch.equal(c, row)) for row in point.serialized_code]


def test_shuffle_orders_false_keeps_the_orders_at_every_stage_and_is_deterministic():
    torch.manual_seed(0)
    m = PointTransformerV3(**TINY).eval()
    data = cloud()
    with torch.no_grad(): a, b = m(data), m(data)
    assert torch.equal(upcast(a), upcast(b))
    for p in stages(a): assert order_rows(p, TINY["order"]) == [0, 1, 2, 3]


def test_shuffle_orders_true_draws_new_orders_for_every_stage():
    torch.manual_seed(0)
    m = PointTransformerV3(**{**TINY, "shuffle_orders": True}).train()
    with torch.no_grad(): out = m(cloud())
    perms = [order_rows(p, TINY["order"]) for p in stages(out)]
    assert all(sorted(p) == [0, 1, 2, 3] for p in perms)
    assert len({tuple(p) for p in perms}) > 1  # 4 stages, 24 permutations each: equal draws have p < 1e-4


def test_eval_is_deterministic_even_with_shuffle_orders():
    torch.manual_seed(0)
    m = PointTransformerV3(**{**TINY, "shuffle_orders": True, "drop_path": 0.0}).eval()
    with torch.no_grad(): a, b = m(cloud()), m(cloud())
    assert torch.equal(upcast(a), upcast(b))
    for p in stages(a): assert order_rows(p, TINY["order"]) == [0, 1, 2, 3]


# --- CUDA ------------------------------------------------------------------------------------------------------

@pytest.fixture
def spconv_kernels():
    "SubMConv3d through spconv's kernels (the default; other backends: tests/test_sparse_conv.py)"
    from sonata_nb import model as M
    before = M._conv_backend
    M.set_conv_backend("spconv")
    try: yield
    finally: M.set_conv_backend(before)

@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: spconv's implicit GEMM under CUDA autocast")
@pytest.mark.parametrize("amp", [torch.float16, torch.bfloat16, None])
def test_subm_conv_on_cuda_matches_spconv_bitwise(amp, spconv_kernels):
    "Our casts before spconv's function = spconv's own casts inside it: same outputs and gradients, bit for bit"
    import spconv.pytorch as spconv
    torch.manual_seed(0)
    conv = SubMConv3d(48, 48, kernel_size=3, bias=True, indice_key="k").cuda()
    idx = torch.unique(torch.randint(0, 60, (20000, 3), device="cuda"), dim=0)
    feat = torch.randn(len(idx), 48, device="cuda")
    def run(forward):
        x = feat.clone().requires_grad_()
        sp = spconv.SparseConvTensor(x, torch.cat([torch.zeros_like(idx[:, :1]), idx], 1).int(), [64, 64, 64], 1)
        with torch.autocast("cuda", dtype=amp or torch.float16, enabled=amp is not None): y = forward(sp).features
        y.float().square().sum().backward()
        grads = (x.grad, conv.weight.grad.clone(), conv.bias.grad.clone())
        conv.zero_grad(set_to_none=True)
        return y, grads
    def spconv_forward(sp):  # spconv's own path, training flag set as SubMConv3d does
        conv.training = True
        return spconv.SubMConv3d.forward(conv, sp)
    from sonata_nb import kernels
    before = kernels._bias_grad_kernel
    kernels.set_bias_grad_kernel(True)  # off by default: here the column-sum kernel's bias gradient
    try: ours = run(conv)
    finally: kernels.set_bias_grad_kernel(before)
    assert (ours[0].grad_fn.name() == "_AddBiasBackward") == (amp is not None)  # the kernel's path (under autocast only)
    theirs = run(spconv_forward)
    assert ours[0].dtype == theirs[0].dtype and torch.equal(ours[0], theirs[0])
    for a, b in zip(ours[1][:2], theirs[1][:2]): assert a.dtype == b.dtype and torch.equal(a, b)
    # the bias gradient: the column-sum kernel's float32 sum (spconv's: torch's sum, in the output's dtype)
    exact = (2 * ours[0].double()).sum(0)
    assert ours[1][2].dtype == theirs[1][2].dtype
    slack = 1e-6 * (2 * ours[0].double()).abs().sum(0).max()  # float32 rounding, where both sums are float32
    assert (ours[1][2].double() - exact).abs().max() <= (theirs[1][2].double() - exact).abs().max() + slack
    torch_sums = run(conv)  # the default: torch's sums, spconv's bits
    for a, b in zip(torch_sums[1], theirs[1]): assert a.dtype == b.dtype and torch.equal(a, b)



@pytest.mark.parametrize("backend", ["spconv", "gather"])
def test_stage_template_path_equals_the_blocks_one_by_one_on_cpu(backend):
    "The path CUDA inference captures (weights and maps, or neighbour tables, copied into a template block), run eagerly: same features"
    from sonata_nb import model as M
    torch.manual_seed(0)
    m = PointTransformerV3(**{**TINY, "enc_depths": (1, 3, 1, 4), "dec_depths": (3, 1, 1), "enc_mode": False}).eval()
    data = cloud()
    before = M._conv_backend
    M._gather_on_cpu = backend == "gather"; M.set_conv_backend(backend)  # the convolutions through sparse_conv on the CPU too
    try:
        with torch.no_grad(): eager = m(data).feat
        M._replay_on_cpu = True
        with torch.no_grad(): replayed = [m(data).feat for _ in range(2)]  # the second run includes the first blocks
    finally: M._replay_on_cpu = M._gather_on_cpu = False; M.set_conv_backend(before)
    for r in replayed: assert torch.equal(r, eager)
    used = {name for name, stage in [*m.enc.named_children(), *m.dec.named_children()] if stage in M._TEMPLATES}
    assert used == {"enc1", "enc3", "dec0"}, used  # the stages with at least 1 + MIN_REPLAYS blocks


def test_attention_hooks_fire_and_keep_blocks_out_of_the_template():
    "A forward hook on a block's attention sees its Point, in training and in inference (the template path is skipped)"
    from sonata_nb import model as M
    torch.manual_seed(0)
    m = PointTransformerV3(**{**TINY, "enc_depths": (1, 3, 1, 1)}).eval()
    seen = []
    m.enc.enc1.block2.attn.register_forward_hook(lambda mod, args, out: seen.append(type(args[0]).__name__))
    M._replay_on_cpu = True
    try:
        with torch.no_grad(): m(cloud())
    finally: M._replay_on_cpu = False
    m.train()(cloud())
    assert seen == ["Point", "Point"] and m.enc.enc1 not in M._TEMPLATES


@pytest.mark.parametrize("bad", ["offset past the points", "no points"])
def test_bad_offsets_and_empty_clouds_get_the_clear_errors(bad):
    "The pooling plan, computed first, leaves bad input to read_host_shape's errors (no index error)"
    m = PointTransformerV3(**TINY).eval()
    data = cloud()
    if bad == "no points": data = {k: v[:0] if k != "offset" else torch.zeros_like(v) for k, v in data.items()}
    else: data["offset"] = data["offset"] + 5
    with pytest.raises(ValueError, match="offset must hold|has no points"), torch.no_grad(): m(data)

@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: spconv's implicit-GEMM neighbour maps")
@pytest.mark.parametrize("algo", ["mask_implicit_gemm", "mask_split_implicit_gemm"])
def test_torch_sorted_neighbour_map_is_spconvs_bitwise(algo, spconv_kernels):
    "The map with its masks sorted by torch = spconv's thrust-sorted map; outputs and gradients bit for bit"
    import spconv.pytorch as spconv
    from spconv.pytorch import ops
    from sonata_nb import model as M
    torch.manual_seed(0)
    conv = SubMConv3d(48, 48, kernel_size=3, bias=True, indice_key="k").cuda()
    idx = torch.unique(torch.randint(0, 50, (30000, 3), device="cuda"), dim=0)
    idx = torch.cat([torch.randint(0, 2, (len(idx), 1), device="cuda"), idx], 1).int()  # two samples
    feat = torch.randn(len(idx), 48, device="cuda")
    sp = lambda x: spconv.SparseConvTensor(x, idx, [50, 50, 50], 2)
    ours = M._sorted_subm_map(conv, sp(feat), M.SPCONV_ALGOS[algo])
    theirs = ops.get_indice_pairs_implicit_gemm(idx, 2, [50, 50, 50], M.SPCONV_ALGOS[algo], ksize=[3, 3, 3],
                                                stride=[1, 1, 1], padding=[1, 1, 1], dilation=[1, 1, 1],
                                                out_padding=[0, 0, 0], subm=True, is_train=True)
    assert torch.equal(ours.pair_fwd, theirs[2]) and torch.equal(ours.pair_bwd, theirs[3])
    for a, b in zip(ours.pair_mask_fwd_splits, theirs[4]): assert torch.equal(a, b)
    for a, b in zip(ours.mask_argsort_fwd_splits, theirs[6]): assert torch.equal(a, b)
    def run(torch_sort):
        M.set_torch_map_sort(torch_sort); M.set_spconv_algo(algo)
        try:
            x = feat.clone().requires_grad_()
            with torch.autocast("cuda", dtype=torch.float16): y = conv(sp(x)).features
            y.float().square().sum().backward()
            grads = (x.grad, conv.weight.grad.clone(), conv.bias.grad.clone())
            conv.zero_grad(set_to_none=True)
            return (y, *grads)
        finally: M.set_torch_map_sort(True); M.set_spconv_algo(None)
    for a, b in zip(run(True), run(False)): assert torch.equal(a, b)

@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: CUDA graphs")
@pytest.mark.parametrize("amp", [torch.float16, None])
@pytest.mark.parametrize("enc_mode,layer_scale", [(True, None), (False, None), (True, 0.1)])
def test_block_graphs_on_cuda_equal_the_blocks_one_by_one_bitwise(amp, enc_mode, layer_scale):
    "Inference with each stage's blocks replayed as one CUDA graph = the blocks run one by one, bit for bit"
    import warnings
    from sonata_nb import model as M
    torch.manual_seed(0)
    m = PointTransformerV3(**{**SONATA_CONFIG, "enc_mode": enc_mode, "layer_scale": layer_scale}).cuda().eval()
    def run(data, graphs):
        M._block_graphs = graphs  # not set_block_graphs: that would drop the templates (and their warm state)
        try:
            with torch.no_grad(), torch.autocast("cuda", dtype=amp or torch.float16, enabled=amp is not None):
                out = m(data)
                return upcast(out) if enc_mode else out.feat
        finally: M._block_graphs = True
    for n, seed in ((3000, 0), (5000, 1), (4000, 2)):  # a new capture for every forward; from the second on, whole stages
        data = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in toy_cloud(n=n, seed=seed).items()}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            graphed = run(data, True)
        assert not [w for w in caught if "CUDA graph" in str(w.message)], [str(w.message) for w in caught]
        template = M._TEMPLATES.get(m.enc.enc3, {}).get(False)  # the 12-block stage went through the template
        assert template is not None and template.warm
        eager = run(data, False)
        assert graphed.dtype == eager.dtype and torch.equal(graphed, eager)
    # under the default half-precision LayerNorm (no gradient) the stages get float16 features, which LayerScale's
    # float32 gain turns into float32: from the second forward on, that first block keeps running as it is
    assert template.whole == (layer_scale is None or amp is None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: CUDA graphs")
@pytest.mark.parametrize("whole", [True, False])
def test_block_graphs_of_a_frozen_encoder_in_train_mode_draw_as_the_blocks_bitwise(whole):
    "A `lin` step's encoder (train mode, frozen, stochastic depth): the graphs replay the eager blocks' draws, bit for bit"
    from sonata_nb import model as M
    torch.manual_seed(0)
    m = PointTransformerV3(**SONATA_CONFIG).cuda().train().requires_grad_(False)
    def run(data, graphs, seed=7):
        M._block_graphs, M._whole_stages = graphs, whole
        try:
            torch.manual_seed(seed)
            with torch.autocast("cuda", dtype=torch.float16): return upcast(m(data))
        finally: M._block_graphs, M._whole_stages = True, True
    for n, seed in ((3000, 0), (5000, 1), (4000, 2)):
        data = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in toy_cloud(n=n, seed=seed).items()}
        graphed = run(data, True)
        assert M._TEMPLATES.get(m.enc.enc3, {}).get(True) is not None
        eager = run(data, False)
        assert not graphed.requires_grad and torch.equal(graphed, eager)
    assert not torch.equal(run(data, True, seed=8), eager)  # other draws: rows were dropped


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: autocast's float32 LayerNorm")
def test_layer_norm_saving_its_half_input_is_torchs_bitwise_on_cuda():
    "A trained LayerNorm under CUDA autocast saves its half input (not the float32 copy): torch's outputs and gradients"
    from sonata_nb import model as M
    from sonata_nb.model import LayerNorm
    torch.manual_seed(0)
    ln = LayerNorm(96).cuda()
    with torch.no_grad(): ln.weight.uniform_(0.5, 1.5); ln.bias.normal_()
    x = (torch.randn(20000, 96, device="cuda") * 3).half()
    def run(f):
        xx = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.float16): y = f(xx)
        y.float().square().sum().backward()
        out = [y, xx.grad, ln.weight.grad.clone(), ln.bias.grad.clone()]
        ln.zero_grad(set_to_none=True)
        return out
    before = M._fused_layernorm
    M.set_fused_layernorm(False)  # torch's kernels (the fused ones, on by default, are tested in tests/test_kernels.py)
    try: ours, theirs = run(ln), run(lambda t: torch.nn.LayerNorm.forward(ln, t))
    finally: M.set_fused_layernorm(before)
    for a, b in zip(ours, theirs): assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: the compiled column-sum kernel")
def test_linear_bias_gradient_kernel_on_cuda():
    "kernels.Linear under CUDA autocast: torch's output, input and weight gradients bit for bit; float32 column sums"
    from sonata_nb import kernels
    before = kernels._bias_grad_kernel
    kernels.set_bias_grad_kernel(True)  # off by default
    try: _linear_bias_gradient_kernel_on_cuda(kernels)
    finally: kernels.set_bias_grad_kernel(before)


def _linear_bias_gradient_kernel_on_cuda(kernels):
    g = torch.Generator(device="cuda").manual_seed(0)
    for N, C in ((239901, 48), (21582, 1536), (5130, 2048), (7, 3)):  # Sonata's widest and narrowest, and tiny
        x = torch.randn(N, C, device="cuda", generator=g, dtype=torch.float16) * 4
        exact = x.double().sum(0)
        s = kernels.column_sum(x)
        assert s.dtype == torch.float32 and ((s.double() - exact).abs() <= 2e-7 * x.double().abs().sum(0) + 1e-6).all(), (N, C)
    lin = kernels.Linear(96, 288).cuda()
    ref = torch.nn.Linear(96, 288).cuda(); ref.load_state_dict(lin.state_dict())
    x = torch.randn(194994, 96, device="cuda", generator=g)
    dy = torch.randn(194994, 288, device="cuda", generator=g).half()
    outs = []
    for m in (lin, ref):
        xi = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.float16): y = m(xi)
        y.backward(dy)
        outs.append((y, xi.grad, m.weight.grad, m.bias.grad))
    assert outs[0][0].grad_fn.name() == "AutocastLinearBackward"
    for a, b in zip(outs[0][:3], outs[1][:3]): assert a.dtype == b.dtype and torch.equal(a, b)
    exact = dy.double().sum(0)
    assert (outs[0][3].double() - exact).abs().max() <= (outs[1][3].double() - exact).abs().max()


def test_host_plan_survives_loader_workers():
    "A plan made in a DataLoader worker (sent through a pipe: unpickled tensors count their versions anew) still fits"
    from sonata_nb.model import HostPlan
    from sonata_nb.runtime import to_device
    from sonata_nb.trainer import HostPlanned
    class Clouds(torch.utils.data.Dataset):
        def __len__(self): return 2
        def __getitem__(self, i): return cloud(seed=i)
    collate = HostPlanned(lambda xs: xs[0], [2, 2])
    loader = torch.utils.data.DataLoader(Clouds(), batch_size=1, num_workers=1, collate_fn=collate)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a dropped plan warns
        for batch in loader:
            moved = to_device(batch, torch.device("cpu"))
            assert isinstance(moved["_host_plan"], HostPlan) and moved["_host_plan"].fits(Point(moved), [2, 2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: the pinned copy and the asynchronous check")
def test_host_plan_on_cuda_matches_the_read():
    "On CUDA a batch with a HostPlan (checked on the device without waiting) gives the output of the one without, bitwise"
    from sonata_nb.model import HostPlan, pooling_strides
    from sonata_nb.runtime import to_device
    torch.manual_seed(0)
    m = PointTransformerV3(**{**SONATA_CONFIG, "enc_depths": (1, 1, 1, 1, 1), "enc_patch_size": (128,) * 5}).cuda().eval()
    data = cloud(n=20000, grid=0.02)
    planned = to_device({**data, "_host_plan": HostPlan(data, pooling_strides(m))}, torch.device("cuda"))
    plain = to_device(data, torch.device("cuda"))
    assert planned["_host_plan"] is not None
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        a, b = upcast(m(planned)), upcast(m(plain))
    torch.cuda.synchronize()  # a failed device check would raise here
    assert torch.equal(a, b)


def test_fused_residual_steps_aside_for_hooks():
    "A DropPath with a backward hook (or several modules in drop_path) keeps torch's operations"
    from sonata_nb import model as M
    b = Block(16, 2, drop_path=0.3).train()
    d = b.drop_path[0]
    assert not M._hooked(d)
    h = d.register_full_backward_hook(lambda *a: None)
    assert M._hooked(d)
    h.remove()
    assert not M._hooked(d)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: the compiled residual kernels")
@pytest.mark.parametrize("amp", [torch.float16, torch.bfloat16])
def test_fused_residual_on_cuda_is_torchs_bitwise(amp):
    "A training Block (Sonata stage-1 width) through kernels.residual_drop_path: torch's DropPath + sum bit for bit"
    from sonata_nb import kernels, model as M
    torch.manual_seed(0)
    block = M.Block(96, 6, patch_size=1024, cpe_indice_key="stage1", drop_path=0.3).cuda().train()
    data = cloud(n=30000, grid=0.02)
    data = {k: v.cuda() for k, v in data.items()}
    data["feat"] = torch.randn(len(data["coord"]), 96, device="cuda")
    bias_before = kernels._fused_bias_grad
    kernels.set_fused_bias_grad(False)  # torch's bias sums on both sides (the switch has its own test)
    try: runs, calls = both_ways(block, data, amp, M.set_fused_residual, True, kernels, "_residual_drop_path")
    finally: kernels.set_fused_bias_grad(bias_before)
    assert len(calls) == 2
    same_runs(runs)


# --- host reads ------------------------------------------------------------------------------------------------

_READS = {torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__,
          torch.Tensor.__index__, torch.Tensor.cpu, torch.Tensor.numpy, torch.unique, torch.Tensor.unique, torch.bincount,
          torch.Tensor.bincount, torch.nonzero, torch.Tensor.nonzero, torch.masked_select, torch.Tensor.masked_select,
          torch.unique_consecutive}
_HOST_DATA = {torch.tensor, torch.as_tensor, torch.Tensor.new_tensor}  # built on the host (torch.from_numpy is not seen by the mode)
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.index_select, torch.Tensor.index_select,
             torch.Tensor.index_put_, torch.Tensor.index_add_, torch.gather, torch.Tensor.gather}


def _tensors(x):
    "The tensors in an argument (nested in tuples and lists)"
    if isinstance(x, torch.Tensor): return [x]
    if isinstance(x, (tuple, list)): return [t for y in x for t in _tensors(y)]
    return []


class HostReads(torch.overrides.TorchFunctionMode):
    "Counts, by sonata_nb line, the calls that read device values on the host or bring host-made values to the device blocking (a wait on CUDA)"
    def __init__(self):
        super().__init__(); self.sites, self.host, self.ids = [], [], set()

    def _is_host(self, t) -> bool: return isinstance(t, torch.Tensor) and id(t) in self.ids

    def _track(self, out):
        for t in _tensors(out):
            self.host.append(t); self.ids.add(id(t))  # kept alive, so an id is never reused

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        sizeless = func in (torch.repeat_interleave, torch.Tensor.repeat_interleave) and "output_size" not in kwargs \
            and len(args) > 1 and isinstance(args[1], torch.Tensor)
        index = args[1] if func is torch.Tensor.__getitem__ else None
        index = index if isinstance(index, tuple) else (index,)
        masked = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
        listed = any(isinstance(i, list) for i in index)  # a host-made index: CUDA waits for its copy
        tensors = _tensors(list(args) + list(kwargs.values()))
        on_host = bool(args) and self._is_host(args[0])  # made on the CPU by design (randperm's draw, numpy values, ...)
        host_made = func in _READS and on_host
        # host data built on the CPU is no wait; bringing it to the device is, unless asynchronous (pinned, non_blocking)
        built_on_device = func in _HOST_DATA and (kwargs.get("device") is not None or func is torch.Tensor.new_tensor)
        to_device = func is torch.Tensor.cuda or func is torch.Tensor.to and (
            "device" in kwargs or any(isinstance(a, (torch.device, str, torch.Tensor)) for a in args[1:]))
        non_blocking = kwargs.get("non_blocking", False) or (func is torch.Tensor.copy_ and len(args) > 2 and args[2])
        blocking_copy = not non_blocking and (to_device and on_host or func is torch.Tensor.copy_ and len(args) > 1
                                              and self._is_host(args[1]) and not on_host)
        host_index = func in _INDEXING and not on_host and any(self._is_host(t) for t in tensors[1:])
        if (func in _READS or built_on_device or blocking_copy or host_index or sizeless or masked or listed) and not host_made:
            f = sys._getframe(1)
            while f is not None and "/torch/" in f.f_code.co_filename: f = f.f_back
            if f is not None and "/sonata_nb/" in f.f_code.co_filename:
                self.sites.append(f"{Path(f.f_code.co_filename).name}:{f.f_lineno}")
        out = func(*args, **kwargs)
        made_here = (func is torch.randperm or func in _HOST_DATA) and kwargs.get("device") is None and func is not torch.Tensor.new_tensor
        derived = tensors and all(self._is_host(t) for t in tensors) and not to_device  # computed from host data only
        if made_here or derived or func is torch.Tensor.pin_memory and on_host: self._track(out)
        return out


def test_host_reads_sees_waits_and_not_host_work():
    "The counter of the test below: what waits for the GPU is counted, work on host-made data and asynchronous copies are not"
    env = dict(torch=torch, dev=torch.device("cpu"), d=torch.arange(10))
    def count(expr): # evaluated as a line of a sonata_nb module (the counter only counts those)
        with HostReads() as reads: eval(compile(expr, "/x/sonata_nb/fake.py", "eval"), env)
        return len(reads.sites)
    assert count("d.tolist()") == 1
    assert count("torch.tensor([1, 2], device=dev)") == 1
    assert count("d.new_tensor([1, 2])") == 1
    assert count("torch.tensor([1, 2]).to(dev)") == 1  # a blocking copy of host data
    assert count("torch.tensor([1, 2]).int().to(dev)") == 1  # of derived host data too
    assert count("d.clone().copy_(torch.tensor([0] * 10))") == 1
    assert count("d[torch.tensor([1, 2])]") == 1  # a host-made index
    assert count("d.index_select(0, torch.tensor([1, 2]))") == 1
    assert count("torch.tensor([1, 2]).pin_memory().to(dev, non_blocking=True)" if torch.cuda.is_available() else
                 "torch.tensor([1, 2]).to(dev, non_blocking=True)") == 0
    assert count("torch.tensor([1, 2]).to(torch.float32).sum()") == 0  # host work stays on the host
    assert count("torch.tensor([1, 2]).tolist()") == 0


@pytest.mark.parametrize("enc_mode", [True, False])
@pytest.mark.parametrize("train", [False, True])
def test_forward_reads_the_device_once_or_never_with_a_host_plan(enc_mode, train):
    "Sizes come from one read at the input (host shape and the cells after every pooling), or with a HostPlan made on the CPU and bound by to_device from none; the same output"
    from sonata_nb.model import HostPlan, pooling_strides
    from sonata_nb.runtime import to_device
    torch.manual_seed(0)
    m = PointTransformerV3(**{**TINY, "enc_mode": enc_mode, "shuffle_orders": True}).train(train)
    data = cloud()
    batch = to_device({**data, "_host_plan": HostPlan(data, pooling_strides(m))}, torch.device("cpu"))
    outs = []
    for b, reads_expected in ((batch, 0), (data, 1)):
        torch.manual_seed(1)
        with HostReads() as reads: out = m(b)
        if train: out.feat.sum().backward()
        assert len(reads.sites) == reads_expected, reads.sites
        outs.append(out.feat.detach())
    assert torch.equal(outs[0], outs[1])


# --- upcast ----------------------------------------------------------------------------------------------------

def test_upcast_gives_1232_and_1088_channels_with_the_sonata_widths():
    torch.manual_seed(0)
    cfg = {**SONATA_CONFIG, "enc_depths": (1,) * 5, "enc_patch_size": (64,) * 5, "shuffle_orders": False}
    m = PointTransformerV3(**cfg).eval()
    data = cloud(n=800, grid=0.02)
    with torch.no_grad(): out = m(data)
    full, two = upcast(out), upcast(out, levels=2)
    n = len(data["coord"])
    assert full.shape == (n, 1232) and two.shape == (n, 1088)
    chain = stages(out)[::-1]  # stage 0 .. 4
    assert torch.equal(full[:, :48], chain[0].feat) and torch.equal(two[:, :192], full[:, 144:336])
    assert out.feat.shape[1] == 512 and "pooling_parent" in out  # not consumed


def test_upcast_rows_follow_the_pooling_chain():
    torch.manual_seed(0)
    m = PointTransformerV3(**TINY).eval()
    with torch.no_grad(): out = m(cloud())
    chain = stages(out)[::-1]
    idx = torch.arange(len(chain[0].feat))
    cols = [chain[0].feat]
    for child in chain[1:]:
        idx = child.pooling_inverse[idx]
        cols.append(child.feat[idx])
    assert torch.equal(upcast(out), torch.cat(cols, 1))
    assert torch.equal(upcast(out, levels=1), torch.cat([cols[-2], cols[-1]], 1)[torch.arange(len(idx))])


# --- a real scan -----------------------------------------------------------------------------------------------

def vertex_normals(xyz, faces):
    "Area-weighted vertex normals of a triangle mesh"
    a, b, c = (xyz[faces[:, i]] for i in range(3))
    fn = np.cross(b - a, c - a)
    n = np.zeros_like(xyz)
    for i in range(3): np.add.at(n, faces[:, i], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


@pytest.mark.skipif(not SCAN.exists(), reason="real ScanNet sample not available")
def test_real_scannet_scan_through_a_small_encoder():
    from plyfile import PlyData
    ply = PlyData.read(str(SCAN))
    v = ply["vertex"]
    xyz = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float32)
    rgb = np.stack([v["red"], v["green"], v["blue"]], 1).astype(np.float32)
    normal = vertex_normals(xyz, np.stack(ply["face"]["vertex_indices"]).astype(np.int64)).astype(np.float32)
    xyz = xyz - np.array([*(xyz[:, :2].max(0) + xyz[:, :2].min(0)) / 2, xyz[:, 2].min()], dtype=np.float32)
    grid = np.floor((xyz - xyz.min(0)) / 0.02).astype(np.int64)
    _, pick, inverse = np.unique(grid, axis=0, return_index=True, return_inverse=True)  # one point per 2 cm voxel
    inverse = inverse.reshape(-1)
    data = dict(coord=torch.from_numpy(xyz[pick]), grid_coord=torch.from_numpy(grid[pick]),
                feat=torch.from_numpy(np.concatenate([xyz, rgb / 255, normal], 1)[pick]), offset=torch.tensor([len(pick)]))
    cfg = dict(in_channels=9, order=("z", "z-trans", "hilbert", "hilbert-trans"), enc_depths=(1,) * 5,
               enc_channels=(8, 8, 16, 16, 32), enc_num_head=(1, 1, 2, 2, 4), enc_patch_size=(128,) * 5,
               shuffle_orders=False, enc_mode=True)
    torch.manual_seed(0)
    with torch.no_grad(): out = PointTransformerV3(**cfg).eval()(data)
    feat = upcast(out)
    assert feat.shape == (len(pick), 80) and torch.isfinite(feat).all()
    assert len(out.feat) < len(pick) / 20  # four 2x poolings of surfaces
    # every input point sits inside the cell whose features it received, at every stage
    idx, size = torch.arange(len(pick)), 0.02
    for child in stages(out)[::-1][1:]:
        idx, size = child.pooling_inverse[idx], size * 2
        assert (data["coord"] - child.coord[idx]).abs().max() <= size + 1e-5
    per_vertex = feat[torch.from_numpy(inverse)]
    assert per_vertex.shape == (len(xyz), 80)


def test_grid_unpooling_adds_projected_skip_and_coarse_features():
    from sonata_nb.model import GridUnpooling
    torch.manual_seed(0)
    p = Point({k: v.clone() for k, v in cloud(n=400).items()})
    p.feat = torch.randn(len(p.coord), 8)
    p.serialization(order=("z",)); p.sparsify()
    skip = p.feat.clone()
    with torch.no_grad():
        q = GridPooling(8, 16, shuffle_orders=False)(p)
        coarse, inverse = q.feat.clone(), q.pooling_inverse
        up = GridUnpooling(16, 8, 12)
        want = up.proj_skip[2](up.proj_skip[1](up.proj_skip[0](skip))) + up.proj[2](up.proj[1](up.proj[0](coarse)))[inverse]
        out = up(q)
    assert out is p and torch.allclose(out.feat, want, atol=1e-6)
    assert torch.equal(out.sparse_conv_feat.features, out.feat) and "pooling_parent" not in q


def test_template_drop_path_draws_as_drop_path_in_float64():
    "The template's DropPath compares its draws with the keep probability in the draws' dtype, as `rand < keep` does"
    from sonata_nb.model import _SlotDropPath, _BRANCHES
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x = torch.randn(2000, 3)
        torch.manual_seed(0); u = torch.rand(2000, 1)
        i = next(i for i in range(2000) if float(u[i].float()) < float(u[i]))  # a draw above its float32 rounding
        drop = DropPath(1.0 - (float(u[i]) + 1e-12)).train()  # keeps row i in float64, not in float32
        torch.manual_seed(0); eager = [drop(x), drop(x)]
        assert eager[0][i].abs().sum() > 0
        slot = _SlotDropPath(torch.device("cpu"))
        slot.keep.fill_(1.0 - drop.drop_prob)
        slot.draws = torch.zeros((_BRANCHES, 2000, 1))
        torch.manual_seed(0)
        for d in slot.draws: torch.rand(d.shape, out=d)
        assert all(torch.equal(slot(x), e) for e in eager)
    finally: torch.set_default_dtype(prev)


def test_a_drop_path_outside_the_blocks_drop_path_runs_as_it_is():
    "Stochastic depth elsewhere in a block (here on the attention branch's LayerScale slot) would draw where the template cannot"
    from sonata_nb.model import _block_info
    b = Block(16, 2, patch_size=16, cpe_indice_key="s", drop_path=0.1).train()
    assert not _block_info(b)[2]
    name = next(iter(b.ls1._modules))
    setattr(b.ls1, name, DropPath(0.2).train())
    assert _block_info(b)[2]

def test_mlp_recompute_second_derivatives_are_torchs():
    "Under create_graph the recomputing MLP's backward is differentiable: second derivatives those of torch's MLP (float64: to rounding; bf16 autocast: as close to float64's as torch's own)"
    from sonata_nb.model import MLP, set_mlp_recompute
    torch.manual_seed(0)
    mlp, x0 = MLP(8, 16), torch.randn(20, 8)
    def second(recompute, amp, dt):
        m = MLP(8, 16).to(dt)
        m.load_state_dict(mlp.state_dict())
        set_mlp_recompute(recompute)
        try:
            x = x0.to(dt).requires_grad_()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp): y = m(x)
            assert (y.grad_fn.name() == "_MLPRecomputeBackward") == recompute
            gx, = torch.autograd.grad(y.float().pow(2).sum(), x, create_graph=True)
            return torch.autograd.grad(gx.pow(2).sum(), [x, *m.parameters()])
        finally: set_mlp_recompute(True)
    exact = second(False, False, torch.float64)
    for a, b in zip(second(True, False, torch.float64), exact): torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b, e in zip(second(True, True, torch.float32), second(False, True, torch.float32), exact):
        err_a, err_b = ((a.double() - e).norm() / e.norm()).item(), ((b.double() - e).norm() / e.norm()).item()
        assert err_a <= 1.5 * err_b + 1e-3, (err_a, err_b)  # without the fix: 15-32 % on x, w1, b1
