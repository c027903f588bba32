"""Lovász loss forward + backward on the GPU, today's path (reads the device) against the read-free one (all classes sorted):
per-call latency, host time, and 10 calls queued back to back. N = 240,000 points, 10 % ignored; C = 20 all present,
C = 200 all present, C = 200 with 40 present (ScanNet200-like). Usage: python bench/probes/lovasz_reads.py"""
import time
import torch
from sonata_nb.losses import LovaszLoss
N = 240_000
def run(C, present, rf, dtype=torch.float32, reps=20):
    g = torch.Generator().manual_seed(C)
    logits = (torch.randn(N, C, generator=g) * 2).to(dtype)
    cls = torch.randperm(C, generator=g)[:present]
    labels = cls[torch.randint(0, present, (N,), generator=g)]
    labels[torch.rand(N, generator=g) < 0.1] = -1
    logits, labels, m = logits.cuda(), labels.cuda(), LovaszLoss(read_free=rf)
    x = logits.clone().requires_grad_()
    for _ in range(3): m(x, labels).backward()
    torch.cuda.synchronize(); ts, hs = [], []
    for _ in range(reps):
        t = time.perf_counter(); m(x, labels).backward(); h = time.perf_counter(); torch.cuda.synchronize(); e = time.perf_counter()
        ts.append(e - t); hs.append(h - t)
    ts.sort(); hs.sort()
    # 10 calls queued back to back, one sync at the end
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(10): m(x, labels).backward()
    h = time.perf_counter(); torch.cuda.synchronize(); e = time.perf_counter()
    return ts[len(ts)//2] * 1e3, hs[len(hs)//2] * 1e3, (e - t) * 100, (h - t) * 100
print(torch.cuda.get_device_name(), torch.__version__)
for C, present in ((20, 20), (200, 200), (200, 40)):
    for rf in (False, True, False, True):
        med, host, q, qh = run(C, present, rf)
        print(f"C={C} present={present} read_free={rf}: fwd+bwd median {med:.2f} ms (host returns after {host:.2f} ms); 10 queued: {q:.2f} ms/call, host issued in {qh:.2f} ms/call", flush=True)
