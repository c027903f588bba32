"""What a Triton kernel compiles to, without a GPU: each loop's instruction mix in the SASS, for sm_90.

    python bench/kernel_sass.py conv --channels 48 [--flip] [--config 128,64,128,8,2]
    python bench/kernel_sass.py attention_fwd | attention_dkdv | attention_dq | ln_bwd --channels 384 | wgrad --channels 384

Compiles the kernel as the model launches it (16-byte pointers, channel counts multiples of 16, a unit stride fixed at
1; the block sizes of its CONFIG, or `--config`) with the Triton on the path (`PYTHONPATH=.ci/triton-3.6.0:.` for the
GPU machines' 3.6.0), disassembles the cubin with that Triton's `nvdisasm`, and prints, per loop (a label a later
branch jumps back to), its instructions and the kinds that tell where time goes: tensor-core ops (HGMMA: wgmma;
HMMA: mma.sync), MUFU (exponentials), barriers, asynchronous copies and their waits, global loads. A pipeline that
drains inside a loop nest shows as waits (`DEPBAR`, `WARPGROUP.DEPBAR ... 0x0`) in an outer loop; that is how the
convolution kernel's loop per cell was found (bench/README.md, 2026-12-07 evening).
"""
import argparse, collections, os, re, subprocess, sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

KINDS = ("HGMMA", "HMMA", "MUFU", "BAR.SYNC", "LDGSTS", "DEPBAR", "WARPGROUP.DEPBAR", "LDG", "STG", "SHFL", "FFMA", "FADD", "FMUL")


def spec(kernel:str, channels:int, flip:bool, config):
    "(jit function, signature, constexprs, names of 16-divisible integers, num_warps, num_stages) as the model launches `kernel`"
    from sonata_nb import attention_kernel as A, kernels as K, sparse_conv as S
    t = "fp16"
    if kernel in ("conv", "wgrad") and config: S.CONV_BY_WIDTH[kernel][channels] = config  # --config: this width's, as the model would take it
    if kernel == "conv":  # the module's width both ways (Sonata: C_in = C_out)
        bm, bi, bo, flat, warps, stages = S._conv_blocks(channels, channels, channels)
        one, other = ("s_out", "s_in") if flip else ("s_in", "s_out")
        sig = dict(X=f"*{t}", T="*i32", W=f"*{t}", Y=f"*{t}", B="constexpr", N="i32", CI="i32", CO="i32", K="i32", s_in="i32", s_out="i32")
        sig[one] = "constexpr"
        consts = {one: 1, "B": None, "FLIP": flip, "HAS_B": False, "BLOCK_M": bm, "BLOCK_I": bi, "BLOCK_O": bo, "FLAT": flat}
        return S._sc_conv, sig, consts, ("CI", "CO", other), warps, stages
    if kernel == "wgrad":
        bm, bi, bo, warps, stages, _, cells = S._wgrad_blocks(channels, channels)
        sig = dict(X=f"*{t}", T="*i32", DY=f"*{t}", P="*fp32", N="i32", CI="i32", CO="i32", K="i32", band="i32")
        consts = dict(BLOCK_M=bm, BLOCK_I=bi, BLOCK_O=bo, CELLS=cells)
        return S._sc_wgrad, sig, consts, ("CI", "CO"), warps, stages
    if kernel == "ln_bwd":
        br, bc, nw, _ = K._row_blocks("ln_bwd", channels)
        sig = dict(X="*fp32", W="*fp32", DY=f"*{t}", DS="*fp32", DX="*fp32", Mean="*fp32", Rstd="*fp32", DWp="*fp32", DBp="*fp32",
                   DXp="constexpr", N="i32", C="i32", iters="i32")  # a block's norm: the float32 stream, its other gradient added
        consts = dict(DXp=None, HAS_W=True, HAS_B=True, BLOCK_R=br, BLOCK_C=bc, RTNE_BF16=False, HAS_DS=True, NO_FMA=True, HAS_XS=False)
        return K._ln_bwd, sig, consts, ("C",), config[0] if config else nw, 1
    name = kernel.split("_", 1)[1]
    bm, bn, warps, stages = config or A.CONFIG[name]
    common = dict(QKV=f"*{t}", Idx="*i64", Qlen="*i64", Klen="*i64")
    if name == "fwd":
        sig = dict(common, Out=f"*{t}", Lse="*fp32", L="i32", C="i32", H="i32", qk_scale="fp32")
        consts = dict(D=16, KLEN_IS_L=True, EVEN=True, STORE_LSE=True, BLOCK_M=bm, BLOCK_N=bn)
        return A._pa_fwd, sig, consts, ("C",), warps, stages
    grads = dict(DO=f"*{t}", Lse="*fp32", Delta="*fp32")
    if name == "dkdv":
        sig = dict(QKV=f"*{t}", **grads, Idx="*i64", Qlen="*i64", Klen="*i64", DupBase="*i64", DQKV=f"*{t}", DQ="*fp32", Dup="*fp32",
                   L="i32", C="i32", H="i32", qk_scale="fp32", sm_scale="fp32")
        consts = dict(D=16, KLEN_IS_L=True, ONE_PASS=False, EVEN_M=True, BLOCK_M=bm, BLOCK_N=bn)
        return A._pa_dkdv, sig, consts, ("C",), warps, stages
    sig = dict(QKV=f"*{t}", **grads, Idx="*i64", Qlen="*i64", Klen="*i64", DQKV=f"*{t}", L="i32", C="i32", H="i32", qk_scale="fp32", sm_scale="fp32")
    consts = dict(D=16, KLEN_IS_L=True, EVEN=True, BLOCK_M=bm, BLOCK_N=bn)
    return A._pa_dq, sig, consts, ("C",), warps, stages


def loops(sass:str) -> list:
    "(label, instructions) of each loop: the code from a label to the last branch back to it"
    lines = sass.splitlines()
    labels = {m.group(1): i for i, l in enumerate(lines) if (m := re.match(r"^(\.L_x_\d+):", l))}
    out = []
    for i, l in enumerate(lines):
        m = re.search(r"BRA `\((\.L_x_\d+)\)", l)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            out = [o for o in out if o[0] != m.group(1)] + [(m.group(1), lines[labels[m.group(1)]:i + 1])]
    return out


def mix(lines:list) -> collections.Counter:
    ops = [m.group(1) for l in lines if (m := re.match(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+(?:\.[A-Z0-9_]+)*)", l))]
    return collections.Counter(ops)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kernel", choices=["conv", "wgrad", "ln_bwd", "attention_fwd", "attention_dkdv", "attention_dq"])
    p.add_argument("--channels", type=int, default=48, help="the stage's width (conv, wgrad, ln_bwd)")
    p.add_argument("--flip", action="store_true", help="conv: the input gradient's launch")
    p.add_argument("--config", default=None, help="block sizes, comma-separated, as in the kernel's CONFIG tuple (ln_bwd: warps)")
    args = p.parse_args(argv)
    config = tuple(int(v) for v in args.config.split(",")) if args.config else None
    fn, sig, consts, sixteens, warps, stages = spec(args.kernel, args.channels, args.flip, config)
    full = {**sig, **{k: "constexpr" for k in consts if k not in sig}}
    attrs = {(i,): [["tt.divisibility", 16]] for i, (k, v) in enumerate(full.items()) if v.startswith("*") or k in sixteens}
    k = triton.compile(ASTSource(fn=fn, signature=full, constexprs=consts, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=warps, num_stages=stages))
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "k.cubin").write_bytes(k.asm["cubin"])
        nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
        sass = subprocess.run([str(nvdisasm), "-c", str(Path(d) / "k.cubin")], capture_output=True, text=True, check=True).stdout
    print(f"{args.kernel} (Triton {triton.__version__}, sm_90, {warps} warps, {stages} stages, constexprs {consts})")
    total = mix(sass.splitlines())
    print(f"kernel: {sum(total.values())} instructions")
    for label, body in loops(sass):
        m = mix(body)
        if sum(m.values()) <= 2: continue  # the branch to itself that ends every kernel
        kinds = {kind: sum(c for op, c in m.items() if op == kind or op.startswith(kind + ".")) for kind in KINDS}
        print(f"loop {label}: {sum(m.values())} instructions; " + ", ".join(f"{kind} {n}" for kind, n in kinds.items() if n))


if __name__ == "__main__":
    main()
