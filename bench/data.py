"""Benchmark the ScanNet training transforms of the Sonata linear-probe recipe on a real-size scene.

    python bench/data.py [--json] [--runs 10] [--warmup 2] [--scene PATH_TO_vh_clean_2.ply]

The scene is two side-by-side copies of ScanNet scene0000_00 (about 163k points, area-weighted vertex normals from
the mesh faces) when the raw scan is found (default: /work/shared/data/scannet_raw/...), otherwise a synthetic
room of about 160k points. Everything runs on one thread (OMP_NUM_THREADS=1 is set before numpy/torch load).
Reported: the median over `--runs` calls (after `--warmup` calls) of the whole 18-transform pipeline, of each
transform inside it, and of GridSample(0.02, train) alone on the full scene.
"""
import os
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"): os.environ[_var] = "1"

import argparse, copy, json, platform, sys, time
from pathlib import Path
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sonata_nb.config import Config
from sonata_nb.transforms import Compose, GridSample

LIN_CONFIG = ROOT / "configs/sonata/semseg-sonata-v1m1-0a-scannet-lin.py"  # the 18 train transforms come from here

torch.set_num_threads(1)
DEFAULT_SCENE = str(ROOT.parent / "shared/data/scannet_raw/scans/scene0000_00/scene0000_00_vh_clean_2.ply")  # ../shared beside the repo


def vertex_normals(vertices, faces):
    "Area-weighted vertex normals: sum of the (unnormalised) face normals around each vertex, normalised"
    v0, v1, v2 = (vertices[faces[:, k]] for k in range(3))
    face_normal = np.cross(v1 - v0, v2 - v0)  # length = 2 × face area
    normal = np.stack([np.bincount(faces.ravel(), np.repeat(face_normal[:, c], 3), minlength=len(vertices))
                       for c in range(3)], axis=1)
    length = np.linalg.norm(normal, axis=1, keepdims=True)
    return (normal / np.where(length > 0, length, 1)).astype(np.float32)


def scannet_scene(path):
    "coord, color, normal, segment, instance of a ScanNet `_vh_clean_2.ply` mesh (labels from `.labels.ply` if present)"
    from plyfile import PlyData
    ply = PlyData.read(str(path))
    vert = ply["vertex"].data
    coord = np.stack([vert["x"], vert["y"], vert["z"]], axis=1).astype(np.float32)
    color = np.stack([vert["red"], vert["green"], vert["blue"]], axis=1).astype(np.float32)
    faces = np.vstack(ply["face"].data["vertex_indices"]).astype(np.int64)
    labels_path = Path(str(path).replace(".ply", ".labels.ply"))
    segment = (PlyData.read(str(labels_path))["vertex"].data["label"].astype(np.int64) % 20
               if labels_path.exists() else np.zeros(len(coord), np.int64))
    return dict(coord=coord, color=color, normal=vertex_normals(coord.astype(np.float64), faces),
                segment=segment, instance=np.full(len(coord), -1, np.int64))


def side_by_side(scene, gap=0.5):
    "Two copies of `scene`, the second shifted along x by its width plus `gap` metres"
    shifted = copy.deepcopy(scene)
    shifted["coord"][:, 0] += np.ptp(scene["coord"][:, 0]) + gap
    return {key: np.concatenate([scene[key], shifted[key]]) for key in scene}


def synthetic_room(n=160_000, seed=0):
    "A 6 x 8 x 3 m room (floor, ceiling, walls) with 40 boxes of furniture: `n` surface points, about ScanNet's density"
    rng = np.random.default_rng(seed)

    def box_surface(count, size, faces):  # points on the given faces (axis, high side) of a box [0, size]
        face = rng.integers(0, len(faces), count)
        axis, high = np.array(faces)[face].T
        coord = rng.random((count, 3)) * size
        coord[np.arange(count), axis] = np.where(high == 1, np.asarray(size)[axis], 0.0)
        normal = np.zeros((count, 3))
        normal[np.arange(count), axis] = np.where(high == 1, 1.0, -1.0)
        return coord, normal, axis, high

    n_box = n * 3 // 10
    room_size = np.array([6.0, 8.0, 3.0])
    coord, normal, axis, high = box_surface(n - n_box, room_size, [(a, h) for a in range(3) for h in (0, 1)])
    normal = -normal  # room surfaces face inwards
    box = rng.integers(0, 40, n_box)
    box_size = np.array([0.8, 0.8, 0.9])
    local, box_normal, _, _ = box_surface(n_box, box_size, [(0, 0), (0, 1), (1, 0), (1, 1), (2, 1)])
    corner = rng.random((40, 3)) * (room_size - box_size) * [1, 1, 0]
    return dict(coord=np.concatenate([coord, corner[box] + local]).astype(np.float32),
                color=(rng.random((n, 3)) * 255).astype(np.float32),
                normal=np.concatenate([normal, box_normal]).astype(np.float32),
                segment=np.concatenate([np.where((axis == 2) & (high == 0), 1, 0), 2 + box % 18]).astype(np.int64),
                instance=np.concatenate([np.full(n - n_box, -1), box]).astype(np.int64))


def load_scene(path):
    "The benchmark scene and a description of where it came from"
    if Path(path).exists(): return side_by_side(scannet_scene(path)), f"2 x {Path(path).name}"
    return synthetic_room(), "synthetic room"


def median_ms(fn, scene, runs, warmup):
    "Median wall time in ms of `fn(deepcopy(scene))` (the copy is not timed)"
    times = []
    for i in range(warmup + runs):
        data = copy.deepcopy(scene)
        start = time.perf_counter()
        fn(data)
        if i >= warmup: times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def per_transform_ms(pipeline, scene, runs, warmup):
    "Median ms of each transform of `pipeline` at its place in the pipeline"
    times = [[] for _ in pipeline.transforms]
    for i in range(warmup + runs):
        data = copy.deepcopy(scene)
        for k, t in enumerate(pipeline.transforms):
            start = time.perf_counter()
            data = t(data)
            if i >= warmup: times[k].append((time.perf_counter() - start) * 1e3)
    return [(f"{k:02d}_{type(t).__name__}", float(np.median(ts))) for k, (t, ts) in enumerate(zip(pipeline.transforms, times))]


def machine_info():
    "CPU model, cores, library versions"
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        names = [l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")]
        cpu = names[0] if names else cpu
    return dict(cpu=cpu, cpu_count=os.cpu_count(), python=platform.python_version(), numpy=np.__version__,
                torch=torch.__version__, omp_num_threads=os.environ["OMP_NUM_THREADS"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--scene", default=DEFAULT_SCENE, help="a ScanNet _vh_clean_2.ply (synthetic room if absent)")
    args = parser.parse_args(argv)

    scene, source = load_scene(args.scene)
    pipeline = Compose(Config.fromfile(LIN_CONFIG).data.train.transform, seed=0)
    out = pipeline(copy.deepcopy(scene))
    result = dict(
        scene=source, n_points=int(len(scene["coord"])), n_points_out=int(out["offset"][0]),
        pipeline_median_ms=median_ms(pipeline, scene, args.runs, args.warmup),
        gridsample_median_ms=median_ms(Compose([GridSample(grid_size=0.02, hash_type="fnv", mode="train",
                                                           return_grid_coord=True)], seed=0),
                                       scene, args.runs, args.warmup),
        per_transform_median_ms=dict(per_transform_ms(pipeline, scene, args.runs, args.warmup)),
        runs=args.runs, warmup=args.warmup, machine=machine_info())
    if args.json: print(json.dumps(result))
    else:
        print(f"scene: {source}, {result['n_points']} points -> {result['n_points_out']} after the pipeline")
        print(f"pipeline (18 transforms): {result['pipeline_median_ms']:.1f} ms median of {args.runs}")
        print(f"GridSample(0.02) alone:   {result['gridsample_median_ms']:.1f} ms")
        for name, ms in result["per_transform_median_ms"].items(): print(f"  {name:28s} {ms:7.2f} ms")
        print(result["machine"])
    return result


if __name__ == "__main__":
    main()
