"Serialization codes against slow per-point pure-Python oracles (bit lists, as in the reference's algorithm)."
import random
import pytest
import torch
from sonata_nb.serialization import ORDERS, encode, encode_orders, hilbert_encode, z_order_encode


def bits_msb_first(v, depth):
    return [(v >> (depth - 1 - j)) & 1 for j in range(depth)]


def z_oracle(x, y, z, depth):
    "Bit i of x, y, z goes to bit 3i+2, 3i+1, 3i (OCNN layout)"
    key = 0
    for i in range(depth):
        key |= ((x >> i) & 1) << (3 * i + 2) | ((y >> i) & 1) << (3 * i + 1) | ((z >> i) & 1) << (3 * i)
    return key


def hilbert_oracle(x, y, z, depth):
    "Skilling's encoding on lists of bits, point by point (the numpy-hilbert-curve formulation the reference ports)"
    gray = [bits_msb_first(v & ((1 << depth) - 1), depth) for v in (x, y, z)]  # gray[dim][bit], bit 0 = MSB
    for bit in range(depth):
        for dim in range(3):
            on = gray[dim][bit]
            for low in range(bit + 1, depth):
                if on:
                    gray[0][low] ^= 1
                elif gray[0][low] != gray[dim][low]:
                    gray[0][low] ^= 1
                    gray[dim][low] ^= 1
    stream = [gray[dim][bit] for bit in range(depth) for dim in range(3)]  # bit-major, x first
    acc, out = 0, 0
    for b in stream:  # Gray → binary: running XOR from the most significant bit
        acc ^= b
        out = (out << 1) | acc
    return out


def random_grid(n, depth, seed):
    rng = random.Random(seed)
    return [[rng.randrange(2 ** depth) for _ in range(3)] for _ in range(n)]


@pytest.mark.parametrize("depth", range(1, 17))
def test_codes_match_oracles(depth):
    pts = random_grid(300, depth, seed=depth) + [[2 ** depth - 1] * 3, [0, 0, 0], [2 ** depth - 1, 0, 0]]
    g = torch.tensor(pts)
    assert z_order_encode(g, depth).tolist() == [z_oracle(*p, depth) for p in pts]
    assert hilbert_encode(g, depth).tolist() == [hilbert_oracle(*p, depth) for p in pts]
    assert encode(g, order="hilbert-trans", depth=depth).tolist() == [hilbert_oracle(p[1], p[0], p[2], depth) for p in pts]
    assert encode(g, order="z-trans", depth=depth).tolist() == [z_oracle(p[1], p[0], p[2], depth) for p in pts]


def test_hand_computed():
    g = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [5, 3, 6]])
    assert z_order_encode(g, 3).tolist() == [4, 2, 1, 0b101011110]
    # depth 1 Hilbert code bits are (x, x^y, x^y^z)
    assert hilbert_encode(g[:3], 1).tolist() == [0b111, 0b011, 0b001]
    # depth 2, (1,0,0), by hand: top bits all off → swap the low bits of x and y (x=00, y=01), then of x and z
    # (equal, no-op); transposed (0,1,0) → interleaved stream 000 010 → Gray-decoded (running XOR) 000 011
    assert hilbert_encode(torch.tensor([[1, 0, 0]]), 2).item() == 0b000011


def test_batch_bits_and_single_point():
    g = torch.tensor([[3, 1, 2]])
    b = torch.tensor([5])
    for order in ("z", "z-trans", "hilbert", "hilbert-trans"):
        code = encode(g, b, depth=4, order=order)
        assert code.shape == (1,) and code.dtype == torch.int64
        assert code.item() >> 12 == 5 and code.item() & 0xFFF == encode(g, depth=4, order=order).item()


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_bijective_and_local_on_full_cube(depth):
    side = torch.arange(2 ** depth)
    full = torch.stack(torch.meshgrid(side, side, side, indexing="ij"), -1).reshape(-1, 3)
    for fn in (z_order_encode, hilbert_encode):
        assert torch.equal(fn(full, depth).sort().values, torch.arange(8 ** depth))
    walk = full[hilbert_encode(full, depth).argsort()]
    assert (walk[1:] - walk[:-1]).abs().sum(1).eq(1).all()  # consecutive Hilbert codes are face neighbours
    assert walk[0].tolist() == [0, 0, 0]


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_exhaustive_small_cubes_match_oracle(depth):
    side = range(2 ** depth)
    pts = [[x, y, z] for x in side for y in side for z in side]
    assert hilbert_encode(torch.tensor(pts), depth).tolist() == [hilbert_oracle(*p, depth) for p in pts]


def test_high_bits_ignored_like_reference():
    g = torch.tensor([[5, 6, 7]])
    assert torch.equal(hilbert_encode(g + 8, 3), hilbert_encode(g, 3))
    assert torch.equal(z_order_encode(g + 8, 3), z_order_encode(g, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_codes_equal_the_cpu_codes():
    "On CUDA encode_orders runs the Triton kernel (where installed): the torch path's codes, bit for bit"
    g = torch.Generator().manual_seed(0)
    for depth in (1, 2, 3, 7, 12, 16):
        grid = torch.randint(0, 1 << depth, (5000, 3), generator=g)
        batch = torch.randint(0, 5, (5000,), generator=g).sort().values
        for orders, b in ((ORDERS, batch), (("hilbert-trans", "z-trans", "z"), None), (ORDERS + ("hilbert",), batch)):
            assert torch.equal(encode_orders(grid.cuda(), None if b is None else b.cuda(), depth, orders).cpu(),
                               encode_orders(grid, b, depth, orders))
