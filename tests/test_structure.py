"Point: serialization bookkeeping, sparsify and PointSequential routing."
import copy
import pickle
import pytest
import spconv.pytorch as spconv
import torch
from torch import nn
from sonata_nb.serialization import encode
from sonata_nb.structure import Point, PointModule, PointSequential, batch2offset, offset2batch, offset2bincount

ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")


def random_point(sizes=(30, 1, 45), extent=50, C=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    N = sum(sizes)
    return Point(grid_coord=torch.randint(0, extent, (N, 3), generator=g, dtype=torch.int32),
                 feat=torch.randn(N, C, generator=g), offset=torch.tensor(sizes).cumsum(0))


def test_offsets_round_trip():
    offset = torch.tensor([4, 4, 9, 10])  # an empty sample in the middle
    assert offset2bincount(offset).tolist() == [4, 0, 5, 1]
    batch = offset2batch(offset)
    assert batch.tolist() == [0] * 4 + [2] * 5 + [3]
    assert batch2offset(batch).tolist() == offset.tolist()


def test_serialization_codes_orders_inverses():
    p = random_point()
    p.serialization(order=ORDERS)
    depth = p.serialized_depth
    assert depth == int(p.grid_coord.max() + 1).bit_length()
    for i, o in enumerate(ORDERS):
        code = encode(p.grid_coord, p.batch, depth, o)
        assert torch.equal(p.serialized_code[i], code)
        assert torch.equal(code[p.serialized_order[i]], code.sort().values)
        assert torch.equal(p.serialized_inverse[i][p.serialized_order[i]], torch.arange(len(code)))
        # samples stay contiguous along every curve
        assert torch.equal(p.batch[p.serialized_order[i]], p.batch)


def test_shuffle_is_a_fresh_randperm_each_call():
    p = random_point()
    p.serialization(order=ORDERS)
    plain = p.serialized_code.clone()
    torch.manual_seed(3)
    perms = [torch.randperm(4) for _ in range(3)]
    torch.manual_seed(3)
    for perm in perms:
        p.serialization(order=ORDERS, shuffle_orders=True)
        assert torch.equal(p.serialized_code, plain[perm])
        assert p.order == ORDERS
    p.serialization(order=ORDERS)
    assert torch.equal(p.serialized_code, plain)


def test_grid_coord_from_coord():
    coord = torch.tensor([[1.0, 2.0, 3.0], [1.05, 2.0, 3.099], [0.99, 2.5, 3.0]])
    p = Point(coord=coord, grid_size=0.05, offset=torch.tensor([3]))
    p.serialization()
    expected = torch.div(coord - coord.min(0)[0], 0.05, rounding_mode="trunc").int()
    assert torch.equal(p.grid_coord, expected) and p.grid_coord.dtype == torch.int32


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="missing"):
        Point(feat=torch.rand(2, 3)).serialization()
    with pytest.raises(ValueError, match="Unknown serialization order"):
        random_point().serialization(order=("z", "zz"))
    with pytest.raises(AttributeError, match="no field 'nope'"):
        random_point().nope
    with pytest.raises(ValueError, match="missing"):
        Point(grid_coord=torch.zeros(2, 3, dtype=torch.int32), offset=torch.tensor([2])).sparsify()


def test_sparsify_and_spconv_routing():
    p = random_point()
    p.sparsify()
    assert p.sparse_shape == (p.grid_coord.max(0).values + 96).tolist()
    assert p.sparse_conv_feat.batch_size == 3
    conv = spconv.SubMConv3d(4, 5, kernel_size=3, bias=True, indice_key="s0", algo=spconv.ConvAlgo.Native)
    expected = conv(spconv.SparseConvTensor(p.feat, p.sparse_conv_feat.indices, p.sparse_shape, 3)).features
    seq = PointSequential(conv, nn.Linear(5, 2))
    out = seq(p)
    torch.testing.assert_close(out.feat, seq[1](expected))
    assert out.sparse_conv_feat.features is out.feat


def test_sequential_names_and_kinds():
    from collections import OrderedDict
    seq = PointSequential(OrderedDict(fc=nn.Linear(2, 2), act=nn.GELU()))
    assert list(seq.state_dict()) == ["fc.weight", "fc.bias"]
    with pytest.raises(ValueError, match="used twice"):
        PointSequential(nn.Linear(2, 2), **{"0": nn.Linear(2, 2)})
    seq.add(nn.Linear(2, 3))
    assert list(seq.state_dict())[-2:] == ["2.weight", "2.bias"]
    assert seq(torch.ones(1, 2)).shape == (1, 3)  # plain tensors flow through unchanged routing

    class Tag(PointModule):
        def forward(self, point):
            point.tag = True
            return point
    p = PointSequential(Tag(), nn.Linear(4, 4))(random_point())
    assert p.tag and p.feat.shape[1] == 4


def test_point_copies():
    p = random_point()
    for q in (copy.copy(p), copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert type(q) is Point and sorted(q) == sorted(p) and torch.equal(q.feat, p.feat)
