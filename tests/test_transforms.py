"Mechanism tests for sonata_nb.transforms against straightforward re-statements of the reference algorithms."
import copy
from pathlib import Path

import numpy as np
import pytest
import scipy.interpolate
import scipy.ndimage
import scipy.stats
import torch

from sonata_nb import transforms as T
from sonata_nb.config import Config
from sonata_nb.transforms import TRANSFORMS, Compose

SCENE_PLY = Path(__file__).resolve().parents[1] / "../shared/data/scannet_raw/scans/scene0000_00/scene0000_00_vh_clean_2.ply"


# ---- slow re-statements of the reference algorithms (pointcept/datasets/transform.py) ----

def ref_fnv(arr):
    "FNV-1a 64 over whole uint64 words, offset basis first, multiply then xor, as the reference loop does"
    arr = arr.astype(np.uint64)
    key = np.uint64(14695981039346656037) * np.ones(arr.shape[0], dtype=np.uint64)
    for j in range(arr.shape[1]):
        key *= np.uint64(1099511628211)
        key = np.bitwise_xor(key, arr[:, j])
    return key


def ref_voxels(coord, grid_size):
    "Reference grid coords and voxel keys: floor(coord / np.array(grid_size)) - min, hashed"
    grid = np.floor(coord / np.array(grid_size)).astype(int)
    grid -= grid.min(0)
    return grid, ref_fnv(grid)


def ref_elastic(coords, granularity, magnitude, noise):
    "The reference pass: scipy convolutions (x, y, z box blurs, twice) and RegularGridInterpolator; noise (*dim, 3)"
    blurs = [np.ones(shape, np.float32) / 3 for shape in ((3, 1, 1, 1), (1, 3, 1, 1), (1, 1, 3, 1))]
    for _ in range(2):
        for blur in blurs: noise = scipy.ndimage.convolve(noise, blur, mode="constant", cval=0)
    cmin, dim = coords.min(0), np.array(noise.shape[:3])
    ax = [np.linspace(lo, hi, d) for lo, hi, d in zip(cmin - granularity, cmin + granularity * (dim - 2), dim)]
    interp = scipy.interpolate.RegularGridInterpolator(ax, noise, bounds_error=False, fill_value=0)
    return coords + interp(coords) * magnitude


def room(n=20_000, seed=0):
    "A random cloud on the surfaces of a 4 x 3 x 2.5 m box with colours, unit normals, labels and instances"
    rng = np.random.default_rng(seed)
    size = np.array([4.0, 3.0, 2.5])
    coord = rng.random((n, 3)) * size
    axis = rng.integers(0, 3, n)
    coord[np.arange(n), axis] = np.where(rng.random(n) < 0.5, 0.0, size[axis])
    normal = rng.standard_normal((n, 3))
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    return dict(coord=coord.astype(np.float32), color=(rng.random((n, 3)) * 255).astype(np.float32),
                normal=normal.astype(np.float32), segment=rng.integers(-1, 20, n), instance=rng.integers(-1, 50, n))


def seeded(transform, seed=0):
    transform.rng = np.random.default_rng(seed)
    return transform


# ---- registry and bookkeeping ----

def test_registry_names():
    names = ["CenterShift", "RandomDropout", "RandomRotate", "RandomRotateTargetAngle", "RandomScale", "RandomFlip",
             "RandomJitter", "ElasticDistortion", "ChromaticAutoContrast", "ChromaticTranslation", "ChromaticJitter",
             "GridSample", "SphereCrop", "NormalizeColor", "Copy", "Update", "ToTensor", "Collect"]
    for name in names: assert name in TRANSFORMS, name
    assert isinstance(TRANSFORMS.build(dict(type="GridSample", grid_size=0.02)), T.GridSample)


def test_collect_feat_order_and_offset():
    data = T.ToTensor()(room(100))
    out = T.Collect(keys=("coord", "segment"), feat_keys=("coord", "color", "normal"))(data)
    assert out["offset"].tolist() == [100]
    assert torch.equal(out["feat"][:, 3:6], data["color"]) and torch.equal(out["feat"][:, 6:], data["normal"])
    with pytest.raises(TypeError, match="feat_keys"): T.Collect(keys="coord", feat_keys=5)(data)


def test_index_valid_keys_ride_along():
    data = room(50)
    data["extra"] = np.arange(50)
    data["index_valid_keys"] = list(T.INDEX_VALID_KEYS) + ["extra"]
    out = seeded(T.RandomDropout(0.5, 1.0))(data)
    np.testing.assert_array_equal(room(50)["segment"][out["extra"]], out["segment"])


# ---- geometry ----

def test_center_shift():
    out = T.CenterShift(apply_z=True)(room())
    lo, hi = out["coord"].min(0), out["coord"].max(0)
    np.testing.assert_allclose((lo + hi)[:2], 0, atol=1e-6); assert abs(lo[2]) < 1e-6


def test_dropout_is_subset_without_repeats():
    data = room(1000)
    data["instance"] = np.arange(1000)
    out = seeded(T.RandomDropout(dropout_ratio=0.2, dropout_application_ratio=1.0))(data)
    assert len(out["instance"]) == 800 and len(np.unique(out["instance"])) == 800
    np.testing.assert_array_equal(room(1000)["coord"][out["instance"]], out["coord"])


@pytest.mark.parametrize("axis", ["x", "y", "z"])
def test_rotation_is_rigid_and_turns_normals(axis):
    data = room(500)
    before = copy.deepcopy(data)
    out = seeded(T.RandomRotate(angle=[-1, 1], axis=axis, p=1))(data)
    dist = lambda c: np.linalg.norm(c[:, None] - c[None], axis=-1)
    np.testing.assert_allclose(dist(out["coord"].astype(np.float64)), dist(before["coord"].astype(np.float64)), atol=2e-5)
    # normals turn by the same rotation as coordinate differences
    rot, *_ = np.linalg.lstsq(before["coord"] - before["coord"].mean(0), out["coord"] - out["coord"].mean(0), rcond=None)
    np.testing.assert_allclose(before["normal"] @ rot, out["normal"], atol=1e-4)
    # center=None rotates about the bbox centre, which stays put for a half turn
    half = T.RandomRotate(angle=[1, 1], axis=axis, p=1)(copy.deepcopy(before))
    np.testing.assert_allclose((half["coord"].min(0) + half["coord"].max(0)) / 2,
                               (before["coord"].min(0) + before["coord"].max(0)) / 2, atol=1e-5)


def test_rotation_matches_reference_matrix_and_angle_units():
    data = room(100)
    out = T.RandomRotate(angle=[0.25, 0.25], axis="z", center=[0, 0, 0], p=1)(copy.deepcopy(data))
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    np.testing.assert_allclose(out["coord"], data["coord"] @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T, atol=1e-5)
    untouched = T.RandomRotate(p=0)(copy.deepcopy(data))
    np.testing.assert_array_equal(untouched["coord"], data["coord"])


def test_target_angle_rotation_picks_from_list():
    seen = set()
    t = seeded(T.RandomRotateTargetAngle(angle=(0.5, 1, 1.5), center=[0, 0, 0], p=1))
    for _ in range(30):
        out = t(dict(coord=np.array([[1.0, 0.0, 0.0]], np.float32)))
        seen.add(tuple(np.round(out["coord"][0, :2]).astype(int)))
    assert seen == {(0, 1), (-1, 0), (0, -1)}


def test_flip_probabilities_are_independent():
    t, flips = seeded(T.RandomFlip(p=0.5)), []
    for _ in range(2000):
        out = t(dict(coord=np.array([[1.0, 1.0, 1.0]], np.float32), normal=np.array([[1.0, 1.0, 1.0]], np.float32)))
        np.testing.assert_array_equal(out["coord"], out["normal"])
        flips.append(out["coord"][0, :2] < 0)
    flips = np.array(flips)
    np.testing.assert_allclose(flips.mean(0), 0.5, atol=0.05)
    np.testing.assert_allclose((flips[:, 0] & flips[:, 1]).mean(), 0.25, atol=0.04)


def test_scale_and_jitter_distributions():
    scales = [seeded(T.RandomScale([0.9, 1.1]), s)(dict(coord=np.ones((1, 3), np.float32)))["coord"][0] for s in range(300)]
    scales = np.array(scales)
    assert np.all(scales[:, 0] == scales[:, 2]) and scales.min() >= 0.9 and scales.max() <= 1.1
    data = dict(coord=np.zeros((100_000, 3), np.float32))
    out = seeded(T.RandomJitter(sigma=0.005, clip=0.02))(data)["coord"]
    assert np.abs(out).max() <= 0.02 and abs(out.std() - 0.005) < 1e-4
    clipped = seeded(T.RandomJitter(sigma=0.01, clip=0.005))(dict(coord=np.zeros((100_000, 3), np.float32)))["coord"]
    np.testing.assert_allclose((np.abs(clipped) == np.float32(0.005)).mean(), 2 * scipy.stats.norm.sf(0.5), atol=0.01)


def test_standard_normal_is_normal():
    z = T.standard_normal(np.random.default_rng(1), (400_000,))
    assert scipy.stats.kstest(z, "norm").pvalue > 1e-3
    assert np.isfinite(z).all() and abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01


# ---- elastic distortion ----

@pytest.mark.parametrize("granularity,magnitude", [(0.2, 0.4), (0.8, 1.6)])
def test_elastic_matches_reference_for_same_noise(granularity, magnitude):
    coord = room(5000)["coord"]
    dim = ((coord.max(0) - coord.min(0)) // granularity).astype(int) + 3
    noise = T.standard_normal(np.random.default_rng(7), (3, *dim))  # what our pass draws from this generator
    ours = T.ElasticDistortion.elastic_distortion(coord.copy(), granularity, magnitude, np.random.default_rng(7))
    ref = ref_elastic(coord.astype(np.float64), granularity, magnitude, np.moveaxis(noise, 0, -1).copy())
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_trilinear_blocks_agree_and_match_scipy():
    rng = np.random.default_rng(0)
    grid = rng.standard_normal((3, 7, 9, 5)).astype(np.float32)
    points = (rng.random((5000, 3)) * [5.9, 7.9, 3.9] * 0.5 + 0.25).astype(np.float32)  # spacing 0.5, origin 0.25
    whole = T.trilinear(grid, [0.25, 0.25, 0.25], 0.5, points, chunk=100_000)
    np.testing.assert_array_equal(T.trilinear(grid, [0.25, 0.25, 0.25], 0.5, points, chunk=777), whole)
    ax = [0.25 + 0.5 * np.arange(n) for n in grid.shape[1:]]
    ref = scipy.interpolate.RegularGridInterpolator(ax, np.moveaxis(grid, 0, -1))(points.astype(np.float64))
    np.testing.assert_allclose(whole.T, ref, atol=1e-5)


def test_elastic_displacement_statistics_match_reference():
    coord = room(5000)["coord"]
    ours, ref = [], []
    for seed in range(20):
        moved = T.ElasticDistortion(None).elastic_distortion(coord.copy(), 0.2, 0.4, np.random.default_rng(seed))
        ours.append(np.linalg.norm(moved - coord, axis=1))
        dim = ((coord.max(0) - coord.min(0)) // 0.2).astype(int) + 3
        noise = np.random.RandomState(seed).randn(*dim, 3).astype(np.float32)  # the reference's legacy draw
        ref.append(np.linalg.norm(ref_elastic(coord.astype(np.float64), 0.2, 0.4, noise) - coord, axis=1))
    ours, ref = np.concatenate(ours), np.concatenate(ref)
    np.testing.assert_allclose(ours.mean(), ref.mean(), rtol=0.05)
    np.testing.assert_allclose(np.percentile(ours, [10, 50, 90]), np.percentile(ref, [10, 50, 90]), rtol=0.08)


def test_elastic_probability():
    coord = room(2000)["coord"]
    t = seeded(T.ElasticDistortion())
    moved = [not np.array_equal(t(dict(coord=coord.copy()))["coord"], coord) for _ in range(200)]
    assert 0.88 < np.mean(moved) < 0.99


# ---- colour ----

def test_chromatic_transforms():
    data = room(5000)
    out = T.ChromaticAutoContrast(p=1, blend_factor=1.0)(copy.deepcopy(data))
    np.testing.assert_allclose(out["color"].min(0), 0, atol=1e-3); np.testing.assert_allclose(out["color"].max(0), 255, atol=1e-3)
    flat = dict(color=np.full((10, 3), 7.0, np.float32))
    np.testing.assert_array_equal(T.ChromaticAutoContrast(p=1)(copy.deepcopy(flat))["color"], flat["color"])
    shifts = []
    for seed in range(300):
        out = seeded(T.ChromaticTranslation(p=1, ratio=0.05), seed)(dict(color=np.full((1, 3), 128.0, np.float32)))
        shifts.append(out["color"][0] - 128)
    shifts = np.array(shifts)
    assert np.abs(shifts).max() <= 12.75 + 1e-4 and shifts.std() > 6  # uniform on ±12.75 has std 7.36
    out = seeded(T.ChromaticJitter(p=1, std=0.05))(dict(color=np.full((100_000, 3), 128.0, np.float32)))
    assert abs(out["color"].std() - 0.05 * 255) < 0.1
    clipped = seeded(T.ChromaticJitter(p=1, std=0.05))(dict(color=np.zeros((1000, 3), np.float32)))
    assert clipped["color"].min() == 0 and (clipped["color"] == 0).mean() > 0.4


# ---- GridSample ----

def test_gridsample_train_matches_reference_voxels():
    data = room(20_000)
    data["color"][:, 0] = np.arange(20_000)  # point identity
    grid, key = ref_voxels(data["coord"], 0.05)
    t = seeded(T.GridSample(grid_size=0.05, return_grid_coord=True, return_inverse=True, return_min_coord=True))
    out = t(copy.deepcopy(data))
    idx = out["color"][:, 0].astype(int)
    ukeys = np.unique(key)
    assert len(idx) == len(ukeys)
    np.testing.assert_array_equal(key[idx], ukeys)  # one point per voxel, voxels in ascending key order
    np.testing.assert_array_equal(out["grid_coord"], grid[idx])
    np.testing.assert_array_equal(key[idx][out["inverse"]], key)  # inverse maps every point to its own voxel
    np.testing.assert_allclose(out["min_coord"], (np.floor(data["coord"] / 0.05).min(0) * 0.05)[None], atol=1e-9)
    assert "grid_coord" in out["index_valid_keys"]


def test_gridsample_train_picks_every_member_of_a_voxel():
    coord = np.array([[0.001, 0, 0], [0.002, 0, 0], [0.003, 0, 0], [0.5, 0, 0]], np.float32)
    t, picks = seeded(T.GridSample(grid_size=0.1)), []
    for _ in range(3000): picks.append(t(dict(coord=coord.copy(), segment=np.arange(4)))["segment"])
    picks = np.sort(np.array(picks), axis=1)  # voxels come in key order; sort to find the shared one
    assert (picks[:, 1] == 3).all()
    freq = np.bincount(picks[:, 0], minlength=3) / len(picks)
    np.testing.assert_allclose(freq, 1 / 3, atol=0.04)


def test_gridsample_test_fragments_follow_reference_rule():
    data = room(5000)
    _, key = ref_voxels(data["coord"], 0.05)
    order = np.argsort(key)
    _, inverse, count = np.unique(key[order], return_inverse=True, return_counts=True)
    start = np.cumsum(np.insert(count, 0, 0)[:-1])
    parts = T.GridSample(grid_size=0.05, mode="test", return_grid_coord=True, return_inverse=True)(copy.deepcopy(data))
    assert len(parts) == count.max()
    for i, part in enumerate(parts):
        np.testing.assert_array_equal(part["index"], order[start + i % count])
        np.testing.assert_array_equal(part["coord"], data["coord"][part["index"]])
        assert len(np.unique(key[part["index"]])) == len(count)  # one point per voxel
        ref_inverse = np.zeros_like(inverse); ref_inverse[order] = inverse
        np.testing.assert_array_equal(part["inverse"], ref_inverse)
    np.testing.assert_array_equal(np.unique(np.concatenate([p["index"] for p in parts])), np.arange(5000))


def test_gridsample_ravel_hash_and_displacement():
    data = room(3000)
    out = seeded(T.GridSample(grid_size=0.1, hash_type="ravel", return_grid_coord=True, return_displacement=True,
                              project_displacement=False))(copy.deepcopy(data))
    grid, _ = ref_voxels(data["coord"], 0.1)
    assert len(out["coord"]) == len(np.unique(grid, axis=0))
    assert np.abs(out["displacement"]).max() <= 0.5 + 1e-6
    np.testing.assert_allclose(out["displacement"], out["coord"] / 0.1 - np.floor(data["coord"] / 0.1).min(0)
                               - out["grid_coord"] - 0.5, atol=1e-4)


# ---- SphereCrop ----

def test_spherecrop_keeps_exactly_the_nearest_points():
    data = room(5000)
    out = T.SphereCrop(point_max=1234, mode="center")(copy.deepcopy(data))
    center = data["coord"][2500].astype(np.float64)
    dist = ((data["coord"] - center) ** 2).sum(1)
    kept = np.sort(np.argsort(dist)[:1234])
    np.testing.assert_array_equal(out["coord"], data["coord"][kept])
    np.testing.assert_array_equal(out["segment"], data["segment"][kept])
    rand = seeded(T.SphereCrop(point_max=1000, mode="random"), 3)(copy.deepcopy(data))
    center = data["coord"][np.random.default_rng(3).integers(5000)]  # SphereCrop draws exactly one integer
    dist = ((data["coord"] - center) ** 2).sum(1)
    np.testing.assert_array_equal(rand["coord"], data["coord"][np.sort(np.argsort(dist)[:1000])])
    assert len(T.SphereCrop(sample_rate=0.6)(copy.deepcopy(data))["coord"]) == 3000
    assert len(T.SphereCrop(point_max=10_000)(copy.deepcopy(data))["coord"]) == 5000


def test_nearest_k_with_ties():
    np.testing.assert_array_equal(T.nearest_k(np.array([1.0, 1.0, 1.0, 0.0]), 2), [0, 3])


# ---- Compose and the full recipe ----

SCANNET_TRAIN = Config.fromfile(Path(__file__).parents[1] / "configs/sonata/semseg-sonata-v1m1-0a-scannet-lin.py").data.train.transform

def test_compose_seed_and_global_seed_reproducible():
    a = Compose(SCANNET_TRAIN, seed=1)(room())
    b = Compose(SCANNET_TRAIN, seed=1)(room())
    c = Compose(SCANNET_TRAIN, seed=2)(room())
    assert torch.equal(a["feat"], b["feat"])
    assert a["feat"].shape != c["feat"].shape or not torch.equal(a["feat"], c["feat"])
    np.random.seed(5); d = Compose(SCANNET_TRAIN)(room())
    np.random.seed(5); e = Compose(SCANNET_TRAIN)(room())
    assert torch.equal(d["feat"], e["feat"]) and torch.equal(d["grid_coord"], e["grid_coord"])


def test_scannet_train_pipeline_output():
    out = Compose(SCANNET_TRAIN, seed=0)(room(30_000))
    assert set(out) == {"coord", "grid_coord", "segment", "offset", "feat"}
    n = out["offset"].item()
    assert out["feat"].shape == (n, 9) and out["feat"].dtype == torch.float32 and out["grid_coord"].dtype == torch.int64
    assert len(torch.unique(out["grid_coord"], dim=0)) == n  # one point per 2 cm voxel
    assert out["feat"][:, 3:6].min() >= 0 and out["feat"][:, 3:6].max() <= 1
    np.testing.assert_allclose(out["feat"][:, 6:].norm(dim=1).numpy(), 1, atol=1e-4)
    lo, hi = out["coord"].min(0).values, out["coord"].max(0).values
    np.testing.assert_allclose(((lo + hi) / 2)[:2].numpy(), 0, atol=1e-5)


def test_validation_pipeline_inverse_maps_back():
    cfg = [dict(type="CenterShift", apply_z=True), dict(type="Copy", keys_dict={"segment": "origin_segment"}),
           dict(type="GridSample", grid_size=0.02, hash_type="fnv", mode="train", return_grid_coord=True,
                return_inverse=True),
           dict(type="CenterShift", apply_z=False), dict(type="NormalizeColor"), dict(type="ToTensor"),
           dict(type="Collect", keys=("coord", "grid_coord", "segment", "origin_segment", "inverse"),
                feat_keys=("coord", "color", "normal"))]
    data = room(10_000)
    out = Compose(cfg, seed=0)(copy.deepcopy(data))
    assert len(out["origin_segment"]) == 10_000 and out["inverse"].max() == len(out["segment"]) - 1
    grid = np.floor((T.CenterShift()(copy.deepcopy(data))["coord"]) / np.array(0.02)).astype(int)
    grid -= grid.min(0)
    np.testing.assert_array_equal(out["grid_coord"][out["inverse"]].numpy(), grid)


@pytest.mark.skipif(not SCENE_PLY.exists(), reason="real ScanNet sample not available")
def test_real_scene_voxels_match_reference():
    from plyfile import PlyData
    vert = PlyData.read(str(SCENE_PLY))["vertex"].data
    coord = np.stack([vert["x"], vert["y"], vert["z"]], 1).astype(np.float32)
    data = T.CenterShift()(dict(coord=coord, segment=np.arange(len(coord))))
    _, key = ref_voxels(data["coord"], 0.02)
    out = seeded(T.GridSample(grid_size=0.02, return_inverse=True))(copy.deepcopy(data))
    np.testing.assert_array_equal(key[out["segment"]], np.unique(key))
    np.testing.assert_array_equal(key[out["segment"]][out["inverse"]], key)
