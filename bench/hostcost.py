"""Host (CPU) cost of launching the encoder's main ops on CUDA, one op kind at a time (where the launch-bound time goes).

Each op runs `--calls` times back to back without synchronising: on a GPU that keeps up, the wall time of the loop is
the host's launch cost; the synchronised total gives the device time per call for comparison. Shapes are the issue
batch's stage 0 (240k points, 48 channels) and stage 3 (~4k points, 384 channels). JSON to --json, a table to stdout.

    PYTHONPATH=. python bench/hostcost.py --json bench/results/hostcost_h200.json
    DISABLE_ADDMM_CUDA_LT=1 PYTHONPATH=. python bench/hostcost.py   # torch's addmm without cuBLASLt (env read once)
"""
import argparse, json, os, sys, time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sonata_nb.model import LayerNorm, SubMConv3d
from sonata_nb.structure import Point


def launch_cost(fn, calls:int) -> dict:
    "Host µs per call (loop without sync) and device µs per call (loop then sync)"
    for _ in range(3): fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls): fn()
    host = time.perf_counter() - t
    torch.cuda.synchronize()
    total = time.perf_counter() - t
    return dict(host_us=host / calls * 1e6, wall_us=total / calls * 1e6)


def cases(n0:int, n3:int):
    "(name, callable) pairs of the ops of one encoder block at two stages"
    dev, out = "cuda", []
    for stage, n, c in (("stage0", n0, 48), ("stage3", n3, 384)):
        x = torch.randn(n, c, device=dev)
        lin = torch.nn.Linear(c, 3 * c).to(dev)
        ln = LayerNorm(c).to(dev)
        g = torch.randint(0, 400 if stage == "stage0" else 30, (n, 3), device=dev)
        g = torch.unique(g, dim=0)
        p = Point(grid_coord=g, feat=torch.randn(len(g), c, device=dev), offset=torch.tensor([len(g)], device=dev))
        p.sparsify()
        conv = SubMConv3d(c, c, kernel_size=3, bias=True, indice_key="k").to(dev)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
            sp = conv(p.sparse_conv_feat)  # the output carries the kernel map (indice_dict), as in a block after the first
        q = torch.randn(max(1, n // 1024), c // 16, 1024, 16, device=dev, dtype=torch.float16)
        def amp(f):
            def run():
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16): return f()
            return run
        out += [(f"{stage} linear+bias (autocast)", amp(lambda x=x, lin=lin: lin(x))),
                (f"{stage} matmul no bias (autocast)", amp(lambda x=x, lin=lin: x @ lin.weight.t())),
                (f"{stage} LayerNorm (autocast)", amp(lambda x=x, ln=ln: ln(x))),
                (f"{stage} add", amp(lambda x=x: x + x)),
                (f"{stage} gather rows", amp(lambda x=x: x[torch.arange(0, len(x), device=dev)])),
                (f"{stage} SubMConv3d, cached map (autocast)", amp(lambda conv=conv, sp=sp: conv(sp))),
                (f"{stage} SDPA (P, H, 1024, 16) fp16", amp(lambda q=q: F.scaled_dot_product_attention(q, q, q)))]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available(): p.error("bench/hostcost.py measures CUDA launches; it needs a GPU")
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, calls=args.calls,
               disable_addmm_cuda_lt=os.environ.get("DISABLE_ADDMM_CUDA_LT", ""),
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), ops={})
    print(f"{res['device']}, DISABLE_ADDMM_CUDA_LT={res['disable_addmm_cuda_lt'] or 'unset'}\n\n"
          "| op | host µs / call | device-paced µs / call |\n|---|---|---|")
    for name, fn in cases(240_000, 4_000):
        r = res["ops"][name] = launch_cost(fn, args.calls)
        print(f"| {name} | {r['host_us']:.1f} | {r['wall_us']:.1f} |", flush=True)
    if args.json: Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
