"""Does a spconv call make the CPU wait for the GPU? Queue ~`--busy-ms` of matmuls, then time how long one call takes
to return (host time): a call that returns at once launches asynchronously; one that returns only when the queue is
drained synchronises. Compared with torch ops of the same block (CUDA only).

    PYTHONPATH=. python bench/spconv_sync.py
"""
import argparse, json, sys, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sonata_nb.model import SubMConv3d
from sonata_nb.structure import Point


def host_ms_behind_queue(fn, busy) -> float:
    "Host ms of fn() issued behind ~busy() of queued GPU work"
    torch.cuda.synchronize()
    busy()
    t = time.perf_counter(); fn(); h = (time.perf_counter() - t) * 1000
    torch.cuda.synchronize()
    return h


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json")
    args = p.parse_args(argv)
    dev = "cuda"
    a = torch.randn(8192, 8192, device=dev, dtype=torch.float16)
    def busy():
        for _ in range(20): a @ a
    torch.cuda.synchronize(); t = time.perf_counter(); busy(); torch.cuda.synchronize()
    busy_ms = (time.perf_counter() - t) * 1000
    g = torch.unique(torch.randint(0, 400, (240_000, 3), device=dev), dim=0)
    pt = Point(grid_coord=g, feat=torch.randn(len(g), 48, device=dev), offset=torch.tensor([len(g)], device=dev))
    pt.sparsify()
    conv = SubMConv3d(48, 48, kernel_size=3, bias=True, indice_key="k").to(dev)
    lin = torch.nn.Linear(48, 48).to(dev)
    def amp(f):
        def run():
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16): return f()
        return run
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16): mapped = conv(pt.sparse_conv_feat)  # carries the map
    # pt.sparse_conv_feat has no kernel map: each call builds it (named subm_conv_cached_map in the 2026-12-06 JSON)
    cases = dict(linear=amp(lambda: lin(pt.feat)), subm_conv_new_map=amp(lambda: conv(pt.sparse_conv_feat)),
                 subm_conv_new_map_fp32=lambda: conv(pt.sparse_conv_feat),
                 subm_conv_cached_map=amp(lambda: conv(mapped)))
    for f in cases.values(): f(); f()
    res = dict(device=torch.cuda.get_device_name(), queued_ms=busy_ms, host_ms={})
    for name, f in cases.items():
        res["host_ms"][name] = sorted(host_ms_behind_queue(f, busy) for _ in range(3))[1]
        print(f"{name}: returns after {res['host_ms'][name]:.2f} ms with {busy_ms:.1f} ms of GPU work queued", flush=True)
    import cProfile, pstats  # where the conv waits: the function holding the queued time
    torch.cuda.synchronize(); busy()
    pr = cProfile.Profile(); pr.enable(); cases["subm_conv_new_map"](); pr.disable(); torch.cuda.synchronize()
    rows = sorted(((tt * 1000, f"{Path(f).name}:{line}:{fn}") for (f, line, fn), (cc, nc, tt, ct, _) in
                   pstats.Stats(pr).stats.items()), reverse=True)[:8]
    res["own_ms_behind_queue"] = rows
    for ms, fn in rows: print(f"  {ms:8.2f} ms own  {fn}")
    if args.json: Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
