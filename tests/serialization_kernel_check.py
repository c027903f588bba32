"Run by tests/test_kernels.py (check_serialization) in Triton's interpreter: encode_orders through the kernel equals the torch path"
import torch, itertools
from sonata_nb import serialization as S
assert type(S._encode_kernel).__name__ == "InterpretedFunction"
g = torch.Generator().manual_seed(0)
for depth in range(1, 17):
    n = 700
    grid = torch.randint(0, 1 << depth, (n, 3), generator=g)
    if depth == 16: grid[:5] = torch.tensor([[65535, 65535, 65535], [0, 0, 0], [65535, 0, 1], [1, 65535, 0], [32768, 16384, 8192]])
    batch = torch.randint(0, 7, (n,), generator=g).sort().values
    for orders, b, dt in ((S.ORDERS, batch, torch.int64), (("hilbert-trans", "z"), None, torch.int32),
                          (("z-trans", "hilbert", "hilbert", "z", "hilbert-trans"), batch.int(), torch.int32)):
        x = grid.to(dt)
        S._triton_on_cpu = False; ref = S.encode_orders(x, b, depth, orders)
        S._triton_on_cpu = True; out = S.encode_orders(x, b, depth, orders)
        assert out.dtype == ref.dtype and out.shape == ref.shape and torch.equal(out, ref), (depth, orders)
S._triton_on_cpu = True
assert S.encode_orders(torch.zeros(0, 3, dtype=torch.long), None, 4, S.ORDERS).shape == (4, 0)
for n in (1, 1023, 1024, 1025, 2049):  # one program, its edge, several programs
    grid = torch.randint(-5, 1 << 10, (n, 3), generator=g)
    batch = torch.randint(0, 3, (n,), generator=g)
    S._triton_on_cpu = False; ref = S.encode_orders(grid, batch, 10)
    S._triton_on_cpu = True; assert torch.equal(S.encode_orders(grid, batch, 10), ref), n
# a batch that is not one index per point takes the torch path (its broadcasting, its errors)
grid = torch.randint(0, 16, (50, 3), generator=g)
assert not S._kernel_path(grid, torch.zeros(1, dtype=torch.long)) and S._kernel_path(grid, torch.zeros(50, dtype=torch.long))
try: S.encode_orders(grid, torch.arange(10), 4); raise AssertionError("a batch of the wrong length must raise")
except RuntimeError: pass
print("serialization kernel: equal codes at depths 1..16")
