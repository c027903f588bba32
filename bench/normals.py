"""Accuracy of estimated normals against mesh normals on a real ScanNet scan.

    python bench/normals.py [--json results/normals_cpu2core.json] [--scene PATH_TO_vh_clean_2.ply]

Sonata was pretrained on mesh normals (ScanNet: area-weighted vertex normals of the `_vh_clean_2` mesh). A user's
scan has no mesh, so `sonata_nb.preprocess` estimates normals by PCA (open3d `estimate_normals`, hybrid radius /
max_nn search). This script measures how far those estimates are from the mesh normals, sign-agnostic
(angle = arccos |n·m|, degrees), on the mesh vertices used as a point cloud at two densities:

- `vertices`: all mesh vertices that belong to a face, as they are (ScanNet's decimated mesh, ~3 cm apart);
- `vertices_grid2cm`: one of those per 2 cm voxel (the density the model sees after GridSample(0.02));
- `surface1cm`: points drawn uniformly on the mesh faces, one per cm² (a dense RGB-D / LiDAR scan; median
  neighbour distance ~0.5 cm), with the vertex normals interpolated (barycentric) as reference, in the central
  2.5 m x 2.5 m of the room (for speed);
- `surface1cm_grid2cm`: one of those per 2 cm voxel;
- `surface1cm_noise2mm`, `surface1cm_noise5mm`: the dense sample with Gaussian sensor noise (sigma 2 / 5 mm) along
  the surface normal, as a real depth scan has.

For every (radius, max_nn) setting it reports the median and mean angle error, the share of points off by more
than 30 degrees, and the floor's mean |n_z| (floor = points whose mesh normal is within 10 degrees of +z in the
bottom 20 cm). For the sign it reports, per orientation rule, the share of points whose estimated normal points
the same way as the mesh normal. Only aggregate figures are written, nothing derived point by point from the scan.
"""
import argparse, json, platform, sys, time
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sonata_nb.preprocess import estimate_normals, mesh_vertex_normals, NORMAL_ORIENTATIONS, NORMAL_RADIUS, NORMAL_MAX_NN

DEFAULT_SCENE = ROOT.parent / "shared/data/scannet_raw/scans/scene0000_00/scene0000_00_vh_clean_2.ply"
RADII = (0.03, 0.05, 0.075, 0.1, 0.15)
MAX_NN = (30, 60, 100)
CROP = 1.25  # half-width in metres of the central crop of the dense samples (keeps them fast)


def load_mesh(path):
    "Vertices (float64), faces and area-weighted vertex normals of a .ply mesh"
    from plyfile import PlyData
    ply = PlyData.read(str(path))
    v = np.stack([ply["vertex"][k] for k in "xyz"], 1).astype(np.float64)
    f = np.stack(ply["face"].data["vertex_indices"]).astype(np.int64)
    return v, f, mesh_vertex_normals(v, f).astype(np.float64)


def surface_sample(v, f, normal, spacing=0.01, seed=0):
    "Points drawn uniformly on the faces, about one per `spacing`² of area; normals interpolated from the vertices"
    rng = np.random.default_rng(seed)
    area = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1) / 2
    face = rng.choice(len(f), int(area.sum() / spacing**2), p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(len(face))), rng.random(len(face))
    w = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], 1)[:, :, None]
    pts, nrm = (w * v[f[face]]).sum(1), (w * normal[f[face]]).sum(1)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    return pts, nrm


def grid_subsample(coord, size=0.02, seed=0):
    "Indices of one random point per `size` voxel"
    grid = np.floor((coord - coord.min(0)) / size).astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(coord))
    _, first = np.unique(grid[order], axis=0, return_index=True)
    return np.sort(order[first])


def angle_stats(est, mesh, floor):
    "Sign-agnostic angle error (degrees) statistics and the floor's mean |n_z|"
    ang = np.degrees(np.arccos(np.clip(np.abs((est * mesh).sum(1)), 0, 1)))
    return dict(median_deg=float(np.median(ang)), mean_deg=float(ang.mean()), p90_deg=float(np.percentile(ang, 90)),
                over30_pct=float((ang > 30).mean() * 100), floor_mean_abs_nz=float(np.abs(est[floor, 2]).mean()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scene", default=str(DEFAULT_SCENE))
    p.add_argument("--json", default=None, help="write the results here (relative to bench/)")
    p.add_argument("--table", default=None, help="only print the markdown table of this results JSON")
    a = p.parse_args(argv)
    if a.table: return print(markdown(json.loads(Path(a.table).read_text())))
    v, f, vn = load_mesh(a.scene)
    used = np.zeros(len(v), bool); used[f.ravel()] = True
    dense, dense_n = surface_sample(v, f, vn, 0.01)
    mid = (dense.min(0) + dense.max(0)) / 2
    crop = (np.abs(dense[:, :2] - mid[:2]) < CROP).all(1)
    dense, dense_n = dense[crop], dense_n[crop]
    noise = np.random.default_rng(1).normal(size=(len(dense), 1)) * dense_n  # along the surface normal
    samples = dict(vertices=(v[used], vn[used]))
    samples["vertices_grid2cm"] = tuple(x[grid_subsample(v[used])] for x in samples["vertices"])
    samples["surface1cm"] = (dense, dense_n)
    samples["surface1cm_grid2cm"] = tuple(x[grid_subsample(dense)] for x in samples["surface1cm"])
    samples["surface1cm_noise2mm"] = (dense + 0.002 * noise, dense_n)
    samples["surface1cm_noise5mm"] = (dense + 0.005 * noise, dense_n)
    rows, signs = [], []
    for name, (c, m) in samples.items():
        floor = (m[:, 2] > np.cos(np.radians(10))) & (c[:, 2] < c[:, 2].min() + 0.2)
        spacing = _median_spacing(c)
        print(f"{name}: {len(c):,} points, median spacing {spacing * 100:.2f} cm, {floor.sum():,} floor points")
        for radius in RADII:
            for max_nn in MAX_NN:
                t0 = time.perf_counter()
                est = estimate_normals(c, radius, max_nn, "center").astype(np.float64)
                sec = time.perf_counter() - t0
                row = dict(sample=name, points=len(c), spacing_cm=spacing * 100, radius=radius, max_nn=max_nn,
                           seconds=sec, **angle_stats(est, m, floor))
                rows.append(row)
                print(f"  r={radius:<5} nn={max_nn:<4} median {row['median_deg']:5.2f}  mean {row['mean_deg']:5.2f}  "
                      f">30° {row['over30_pct']:4.1f}%  floor |nz| {row['floor_mean_abs_nz']:.3f}  {sec:.2f}s")
        for orient in NORMAL_ORIENTATIONS:
            est = estimate_normals(c, NORMAL_RADIUS, NORMAL_MAX_NN, orient).astype(np.float64)
            agree = float(((est * m).sum(1) > 0).mean() * 100)
            signs.append(dict(sample=name, orient=orient, radius=NORMAL_RADIUS, max_nn=NORMAL_MAX_NN, same_sign_pct=agree))
            print(f"  orient={orient:<8} same sign as the mesh normal: {agree:.1f}%")
    import open3d
    out = dict(scene=Path(a.scene).name, rows=rows, orientation=signs,
               machine=dict(cpu=platform.processor() or platform.machine(), python=platform.python_version(),
                            numpy=np.__version__, open3d=open3d.__version__),
               command="python bench/normals.py" + (f" --json {a.json}" if a.json else ""))
    print(markdown(out))
    if a.json:
        path = Path(__file__).parent / a.json
        path.write_text(json.dumps(out, indent=1))
        print(f"wrote {path}")
    return out


def markdown(out):
    "The results as a markdown table: one row per (radius, max_nn), `median / mean` degrees per sample"
    samples = list(dict.fromkeys(r["sample"] for r in out["rows"]))
    cell = {(r["sample"], r["radius"], r["max_nn"]): r for r in out["rows"]}
    lines = ["| radius | max_nn | " + " | ".join(samples) + " |", "|---|---|" + "---|" * len(samples)]
    for radius, max_nn in dict.fromkeys((r["radius"], r["max_nn"]) for r in out["rows"]):
        lines.append(f"| {radius * 100:g} cm | {max_nn} | " + " | ".join(
            f"{cell[s, radius, max_nn]['median_deg']:.2f} / {cell[s, radius, max_nn]['mean_deg']:.2f}" for s in samples) + " |")
    return "\n".join(lines)


def _median_spacing(coord, n=5000, seed=0):
    from scipy.spatial import cKDTree
    q = coord[np.random.default_rng(seed).choice(len(coord), min(n, len(coord)), replace=False)]
    return float(np.median(cKDTree(coord).query(q, k=2)[0][:, 1]))


if __name__ == "__main__":
    main()
