"""Regenerate tests/fixtures/reference_oracle/ from a checkout of the reference Sonata code.

    git clone https://github.com/facebookresearch/sonata /tmp/sonata-ref        # the fixture: commit 18c09ff
    pip install --target /tmp/oracle-deps addict                                 # its one pure-Python dependency
    PYTHONPATH=.:/tmp/oracle-deps python tools/make_reference_oracle.py /tmp/sonata-ref

The reference runs on the CPU in a scratch copy (a temporary folder): its `sonata/` package is copied there, and the
packages it imports but that are not installed here get tiny stand-ins written next to it:
  * flash_attn: `flash_attn_varlen_qkvpacked_func` as exact attention (float64) over each `cu_seqlens` segment;
    the reference's cast of q/k/v to float16 before the call is removed in the scratch copy (one expression), so the
    stored outputs are float32 results with exact attention;
  * torch_scatter: `segment_csr` through `torch.Tensor.scatter_reduce_` (max is exact; means only touch `coord`);
  * timm.layers: `DropPath`, the identity in eval mode (the only mode used here).
Nothing is installed into the project. Settings the oracle needs that the reference does not expose are set on the
module instances after construction: every GridPooling gets `shuffle_orders=False` (the reference's pooling layers
default to shuffling and PTv3 does not pass its own flag down), and the spconv convolutions run spconv's Native CPU
algorithm with the bias added after the convolution (what `sonata_nb.model.SubMConv3d` does on the CPU).

Input: two crops of rooms from `sonata_nb.demo.generate_room` (procedural, no real scan data), grid-sampled at 2 cm.
Weights: seeded random values of the tiny config `CONFIG` below, with random LayerNorm and LayerScale values so that
dropping any of them changes the outputs; saved in the released format {"config", "state_dict"}.
"""
from __future__ import annotations
import argparse, importlib, json, shutil, subprocess, sys, tempfile, textwrap
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "reference_oracle"

# Same block structure as the released Sonata encoder (5 stages, 4 orders, pre-norm, flash-style patches), reduced
# widths and depths; stage 0 has 4 blocks so that every serialization order is used; small patches so that every
# stage has several patches and padded last patches; in stage 4 the second sample is shorter than a patch.
CONFIG = dict(
    in_channels=9, order=("z", "z-trans", "hilbert", "hilbert-trans"), stride=(2, 2, 2, 2),
    enc_depths=(4, 1, 1, 1, 1), enc_channels=(16, 24, 24, 32, 40), enc_num_head=(2, 3, 3, 4, 5),
    enc_patch_size=(48, 40, 24, 16, 12), dec_depths=(1, 1, 1, 1), dec_channels=(16, 16, 24, 24),
    dec_num_head=(2, 2, 3, 3), dec_patch_size=(48, 40, 24, 16), mlp_ratio=4, qkv_bias=True, qk_scale=None,
    attn_drop=0.0, proj_drop=0.0, drop_path=0.3, layer_scale=1.0, pre_norm=True, shuffle_orders=False,
    enable_rpe=False, enable_flash=True, upcast_attention=False, upcast_softmax=False, traceable=True,
    mask_token=False, enc_mode=False, freeze_encoder=False)
SEED = 20260401
GRID = 0.02
SCENES = [  # (room seed, crop box lower corner, upper corner in metres)
    (11, (0.3, 1.5, -1.0), (1.1, 2.3, 1.5)),  # bedroom: floor and bed
    (3, (2.2, 2.2, -1.0), (2.9, 2.9, 1.3)),  # kitchen: floor and cabinet
]

SHIMS = {
    "flash_attn/__init__.py": '''
        import torch

        def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen=None, dropout_p=0.0, softmax_scale=None, **kw):
            "Exact attention over each segment [cu_seqlens[i], cu_seqlens[i+1]) of qkv (T, 3, H, d), in float64"
            assert dropout_p == 0.0 and not kw, "oracle shim: no dropout, no extra options"
            x = qkv.double()
            scale = softmax_scale if softmax_scale is not None else x.shape[-1] ** -0.5
            out = torch.empty_like(x[:, 0])
            bounds = cu_seqlens.tolist()
            for a, b in zip(bounds[:-1], bounds[1:]):
                q, k, v = (t.transpose(0, 1) for t in x[a:b].unbind(1))  # (H, L, d)
                out[a:b] = (torch.softmax(q @ k.transpose(-2, -1) * scale, -1) @ v).transpose(0, 1)
            return out.to(qkv.dtype)
    ''',
    "torch_scatter/__init__.py": '''
        import torch

        def segment_csr(src, indptr, reduce="sum"):
            "Reduce the rows of src between consecutive indptr entries (no empty segments here)"
            counts = indptr[1:] - indptr[:-1]
            seg = torch.repeat_interleave(torch.arange(len(counts)), counts)
            idx = seg.view(-1, *[1] * (src.dim() - 1)).expand_as(src)
            out = src.new_zeros((len(counts),) + tuple(src.shape[1:]))
            if reduce in ("sum", "mean"):
                out.index_add_(0, seg, src)
                return out / counts.view(-1, *[1] * (src.dim() - 1)).to(src.dtype) if reduce == "mean" else out
            return out.scatter_reduce_(0, idx, src, {"max": "amax", "min": "amin"}[reduce], include_self=False)
    ''',
    "timm/__init__.py": "",
    "timm/layers/__init__.py": '''
        import torch.nn as nn

        class DropPath(nn.Module):
            "Identity outside training (the oracle only runs in eval mode)"
            def __init__(self, drop_prob=0.0):
                super().__init__()
                self.drop_prob = drop_prob
            def forward(self, x):
                assert not self.training, "oracle shim: DropPath is only implemented for eval mode"
                return x
    ''',
}
# the reference casts q/k/v to float16 for flash-attn; the oracle keeps float32 (exact attention in the shim)
HALF_CAST = ("qkv.half().reshape(", "qkv.reshape(")


def scratch_reference(checkout:Path, scratch:Path):
    "Copy the reference package into `scratch`, add the shims, and import it"
    src = checkout / "sonata"
    if not (src / "model.py").is_file():
        raise FileNotFoundError(f"{checkout} is not a checkout of facebookresearch/sonata (no sonata/model.py)")
    shutil.copytree(src, scratch / "sonata")
    model_py = scratch / "sonata" / "model.py"
    text = model_py.read_text()
    if text.count(HALF_CAST[0]) != 1:
        raise RuntimeError(f"expected one `{HALF_CAST[0]}` in {src / 'model.py'}; the reference changed, update HALF_CAST")
    model_py.write_text(text.replace(*HALF_CAST))
    for name, code in SHIMS.items():
        path = scratch / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(code))
    try: import addict  # noqa: F401
    except ImportError: sys.exit("The reference needs `addict`: pip install --target /tmp/oracle-deps addict, "
                                 "then put /tmp/oracle-deps on PYTHONPATH")
    sys.path.insert(0, str(scratch))
    return importlib.import_module("sonata.model")


def make_input() -> dict:
    "Two grid-sampled crops of procedural rooms, with Sonata's input features (coord, color, normal)"
    from sonata_nb.demo import generate_room
    from sonata_nb.transforms import GridSample
    parts = []
    for seed, lo, hi in SCENES:
        room = generate_room(seed, spacing=0.025)
        keep = np.all((room["coord"] >= lo) & (room["coord"] <= hi), axis=1)
        data = {k: room[k][keep] for k in ("coord", "color", "normal")}
        data["coord"] = data["coord"] - data["coord"].mean(0)  # CenterShift-like
        gs = GridSample(grid_size=GRID, hash_type="fnv", mode="train", return_grid_coord=True)
        gs.rng = np.random.default_rng(seed)
        data = gs(data)
        color = data["color"].astype(np.float32) / 127.5 - 1.0  # NormalizeColor
        data["feat"] = np.concatenate([data["coord"], color, data["normal"]], 1).astype(np.float32)
        parts.append(data)
    return dict(coord=np.concatenate([p["coord"] for p in parts]).astype(np.float32),
                grid_coord=np.concatenate([p["grid_coord"] for p in parts]).astype(np.int64),
                feat=np.concatenate([p["feat"] for p in parts]),
                offset=np.cumsum([len(p["coord"]) for p in parts]).astype(np.int64))


def randomize(model:torch.nn.Module, seed:int):
    "Seeded random weights of useful scale: fan-in scaled weights, random biases, LayerNorm and LayerScale values"
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            kind = type(m).__name__
            if kind == "LayerScale": m.gamma.copy_(0.5 + torch.rand(m.gamma.shape, generator=g))
            elif kind == "LayerNorm":
                m.weight.copy_(1.0 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif kind in ("Linear", "SubMConv3d"):  # weight (out, in) or spconv (out, k, k, k, in): std 1/sqrt(fan_in)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5)
                if m.bias is not None: m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif list(m.parameters(recurse=False)):
                raise TypeError(f"randomize: no rule for the parameters of {name} ({kind})")


def prepare(model, spconv):
    "Eval mode, no order shuffling in pooling, CPU convolutions (Native algorithm, bias added after the convolution)"
    model.eval()
    for m in model.modules():
        if type(m).__name__ == "GridPooling": m.shuffle_orders = False
        if isinstance(m, spconv.SubMConv3d):
            m.algo = spconv.ConvAlgo.Native
            m.train()  # spconv's training flag only chooses the unfused bias path, required on the CPU
    return model


def upcast_all(point):
    "Concatenate every coarser stage onto its parent's rows, down to stage 0 (the demo's loop, at every level)"
    feat = point.feat
    while "pooling_parent" in point.keys():
        feat = torch.cat([point.pooling_parent.feat, feat[point.pooling_inverse]], -1)
        point = point.pooling_parent
    return feat


def upcast_demo(point, levels=2):
    "The reference demo's up-cast: concatenate `levels` times, then copy down to stage 0"
    feat, done = point.feat, 0
    while "pooling_parent" in point.keys():
        parent, inverse = point.pooling_parent, point.pooling_inverse
        feat = torch.cat([parent.feat, feat[inverse]], -1) if done < levels else feat[inverse]
        done, point = done + 1, parent
    return feat


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reference", type=Path, help="checkout of github.com/facebookresearch/sonata")
    ap.add_argument("--out", type=Path, default=OUT, help=f"fixture folder (default {OUT.relative_to(ROOT)})")
    ap.add_argument("--commit", help="the reference commit, recorded in meta.json (default: `git rev-parse HEAD` "
                                     "in the checkout, when it is a git work tree)")
    args = ap.parse_args()
    commit = args.commit or subprocess.run(["git", "-C", str(args.reference), "rev-parse", "HEAD"],
                                           capture_output=True, text=True).stdout.strip() or "unknown"
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="sonata_ref_") as scratch:
        ref = scratch_reference(args.reference.resolve(), Path(scratch))
        import spconv.pytorch as spconv
        inp = make_input()
        tensors = {k: torch.from_numpy(v) for k, v in inp.items()}

        unet = ref.PointTransformerV3(**CONFIG)
        randomize(unet, SEED)
        state = {k: v.detach().clone() for k, v in unet.state_dict().items()}
        enc_state = {k: v for k, v in state.items() if not k.startswith("dec.")}
        out = {}
        with torch.no_grad():
            for tag, flash in (("", True), ("noflash_", False)):  # the released flash rule, and enable_flash=False
                cfg = {**CONFIG, "enable_flash": flash}
                dec = prepare(ref.PointTransformerV3(**cfg), spconv)
                dec.load_state_dict(state)
                out[f"{tag}decoder"] = dec({k: v.clone() for k, v in tensors.items()}).feat
                enc = prepare(ref.PointTransformerV3(**{**cfg, "enc_mode": True}), spconv)
                enc.load_state_dict(enc_state)
                point = enc({k: v.clone() for k, v in tensors.items()})
                out[f"{tag}last"] = point.feat
                if not flash: continue
                out["upcast"] = upcast_all(point)
                demo = upcast_demo(point)
                assert torch.equal(demo, out["upcast"][:, -demo.shape[1]:])  # the demo's columns are the last ones
                counts = []
                while True:
                    counts.append(torch.diff(point.offset, prepend=point.offset.new_zeros(1)))
                    if "pooling_parent" not in point.keys(): break
                    point = point.pooling_parent
                out["stage_counts"] = torch.stack(counts[::-1])  # (stages, samples) points per sample and stage

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(dict(config=CONFIG, state_dict=state), args.out / "weights.pth")
    np.savez_compressed(args.out / "input.npz", **inp)
    np.savez_compressed(args.out / "expected.npz", **{k: v.numpy() for k, v in out.items()})
    meta = dict(reference="github.com/facebookresearch/sonata", commit=commit, seed=SEED, grid_size=GRID, scenes=SCENES,
                stage_counts=out["stage_counts"].tolist(),
                upcast_demo_columns=int(sum(CONFIG["enc_channels"][2:])),
                torch=torch.__version__, spconv=importlib.import_module("spconv").__version__)
    (args.out / "meta.json").write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in meta.items()) + "\n}\n")
    for f in sorted(args.out.iterdir()): print(f"{f.name}: {f.stat().st_size / 1024:.0f} KiB")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
