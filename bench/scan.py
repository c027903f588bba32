"""The issue's benchmark input: ScanNet scene(s) from the raw `_vh_clean_2.ply` mesh, through our preprocessing.

`load_scannet_scene` gives coord, color and mesh normals (as `nbs/14_preprocess` writes them); then the Sonata
recipe's CenterShift(apply_z) + GridSample(0.02, train mode, fixed seed) + NormalizeColor, and
feat = coord + color + normal (9 channels). scene0000_00 gives 79,967 points (the issue quotes 79,942 from an unstated pipeline).
"""
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sonata_nb.transforms import CenterShift, Compose, GridSample, NormalizeColor
try: from sonata_nb.preprocess import load_scannet_scene
except ImportError: load_scannet_scene = None  # plyfile / tqdm absent (e.g. a bare GPU machine): `_load_plain` below

DEFAULT_SCAN = ROOT / ".benchdata" / "scannet" / "scene0000_00"


def _load_plain(scan_dir:Path) -> dict:
    "coord, color and area-weighted mesh normals of a binary little-endian ScanNet `_vh_clean_2.ply`, numpy only"
    path = scan_dir / f"{scan_dir.name}_vh_clean_2.ply"
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    header = raw[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in header: raise ValueError(f"{path}: not a binary little-endian PLY")
    n_v = int(next(l for l in header if l.startswith("element vertex")).split()[-1])
    n_f = int(next(l for l in header if l.startswith("element face")).split()[-1])
    props = [l.split()[1:] for l in header if l.startswith("property ") and "list" not in l]
    types = dict(float="<f4", uchar="u1", int="<i4", uint="<u4", double="<f8", short="<i2", ushort="<u2")
    vdt = np.dtype([(name, types[t]) for t, name in props])
    vertex = np.frombuffer(raw, vdt, n_v, end)
    face = np.frombuffer(raw, np.dtype([("n", "u1"), ("v", "<i4", 3)]), n_f, end + n_v * vdt.itemsize)
    if (face["n"] != 3).any(): raise ValueError(f"{path}: only triangle meshes are supported without plyfile")
    coord = np.stack([vertex[k] for k in "xyz"], 1).astype(np.float32)
    v, f = coord.astype(np.float64), face["v"].astype(np.int64)  # as sonata_nb.preprocess.mesh_vertex_normals
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    normal = np.stack([np.bincount(f.ravel(), np.repeat(cross[:, d], 3), minlength=len(v)) for d in range(3)], 1)
    length = np.linalg.norm(normal, axis=1, keepdims=True)
    normal = (normal / np.where(length > 0, length, 1)).astype(np.float32)
    return dict(coord=coord, color=np.stack([vertex[k] for k in ("red", "green", "blue")], 1).astype(np.uint8), normal=normal)


def load_scan(scan_dir=DEFAULT_SCAN, # `scans/<scene>` folder holding `<scene>_vh_clean_2.ply`
              grid:float=0.02, # GridSample voxel edge (m)
              crop:int|None=None, # keep the `crop` points nearest the scene centre (small CPU checks)
              seed:int=0) -> dict: # GridSample's random pick
    "One grid-sampled scene: coord, grid_coord, feat (9 channels) as float32 / int64 tensors"
    scan_dir = Path(scan_dir)
    if not (scan_dir / f"{scan_dir.name}_vh_clean_2.ply").exists():
        raise FileNotFoundError(f"{scan_dir}: no {scan_dir.name}_vh_clean_2.ply; pass --scan <ScanNet scans/<scene> folder> "
                                "(copy e.g. scans/scene0000_00/* to .benchdata/scannet/scene0000_00/)")
    arrays = _load_plain(scan_dir) if load_scannet_scene is None else load_scannet_scene(scan_dir, table=None, normals=True)[0]
    arrays["color"] = arrays["color"].astype(np.float32)
    d = Compose([CenterShift(apply_z=True), GridSample(grid_size=grid, hash_type="fnv", mode="train",
                 return_grid_coord=True), NormalizeColor()], seed=seed)(arrays)
    coord, color, normal, gc = (np.asarray(d[k]) for k in ("coord", "color", "normal", "grid_coord"))
    if crop is not None and crop < len(coord):
        keep = np.argsort(np.linalg.norm(coord[:, :2] - np.median(coord[:, :2], 0), axis=1), kind="stable")[:crop]
        coord, color, normal, gc = coord[keep], color[keep], normal[keep], gc[keep]
        gc = gc - gc.min(0)
    coord = torch.as_tensor(coord, dtype=torch.float32)
    feat = torch.cat([coord, torch.as_tensor(color, dtype=torch.float32), torch.as_tensor(normal, dtype=torch.float32)], 1)
    return dict(coord=coord, grid_coord=torch.as_tensor(gc, dtype=torch.int64), feat=feat)


def batch_of(scenes:list, device) -> dict:
    "Concatenate scenes into one model input with cumulative `offset`"
    out = {k: torch.cat([s[k] for s in scenes]).to(device) for k in ("coord", "grid_coord", "feat")}
    out["offset"] = torch.tensor([len(s["coord"]) for s in scenes]).cumsum(0).to(device)
    return out


def issue_batch(scan_dir=DEFAULT_SCAN, copies:int=3, crop:int|None=None, device="cpu") -> dict:
    "The issue's batch: `copies` copies of one grid-sampled scan (3 x 79,967 points for scene0000_00)"
    s = load_scan(scan_dir, crop=crop)
    return batch_of([s] * copies, device)
