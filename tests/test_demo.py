"Procedural demo rooms and the demo dataset (sonata_nb.demo)."
import json

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from sonata_nb.classes import SCANNET20_NAMES, SCANNET200_NAMES
from sonata_nb.datasets import ScanNet200Dataset, build_dataset, point_collate_fn
from sonata_nb.demo import DEMO_ASSETS, KINDS, ROOM_TYPES, generate_room, make_demo_data
from sonata_nb.datasets import DemoDataset

C20 = {name: i for i, name in enumerate(SCANNET20_NAMES)}


@pytest.fixture(scope="module")
def rooms():
    return [generate_room(seed, room_type=ROOM_TYPES[seed % 4], rotate=False) for seed in range(8)]


def test_deterministic_from_seed():
    a, b, c = generate_room(5), generate_room(5), generate_room(6)
    for key in DEMO_ASSETS:
        np.testing.assert_array_equal(a[key], b[key])
    assert len(a["coord"]) != len(c["coord"]) or not np.array_equal(a["coord"], c["coord"])
    np.testing.assert_array_equal(generate_room([0, 1, 2])["color"], generate_room([0, 1, 2])["color"])


def test_arrays_dtypes_and_sizes(rooms):
    for r in rooms:
        n = len(r["coord"])
        assert 5_000 < n < 45_000
        assert r["coord"].dtype == np.float32 and r["coord"].shape == (n, 3)
        assert r["normal"].dtype == np.float32 and r["normal"].shape == (n, 3)
        assert r["color"].dtype == np.uint8 and r["color"].shape == (n, 3)
        for key in ("segment20", "segment200", "instance"):
            assert r[key].dtype == np.int64 and r[key].shape == (n,)


def test_normals_are_unit(rooms):
    for r in rooms + [generate_room(3)]:
        np.testing.assert_allclose(np.linalg.norm(r["normal"], axis=1), 1, atol=1e-5)


def test_floor_normals_point_up_and_noise_is_small(rooms):
    for r in rooms:
        floor = r["segment20"] == C20["floor"]
        assert (r["normal"][floor] @ [0, 0, 1] > 0.999).all()
        assert 0.002 < r["coord"][floor, 2].std() < 0.008  # sensor noise of 4 mm around z = 0


def test_label_sets(rooms):
    seen = set()
    for r in rooms:
        labels = set(np.unique(r["segment20"]).tolist())
        assert labels <= set(range(-1, 20))
        assert {C20["wall"], C20["floor"], C20["door"], C20["window"]} <= labels
        seen |= labels
    expected = {"wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
                "counter", "desk", "curtain", "refrigerator"}
    assert {SCANNET20_NAMES[i] for i in seen if i >= 0} == expected
    assert -1 in seen  # the ceiling is ignored by ScanNet-20


def test_segment200_agrees_with_segment20(rooms):
    to20 = {SCANNET200_NAMES.index(n200): (C20[n20] if n20 else -1) for n20, n200 in KINDS.values()}
    for r in rooms:
        assert (r["segment200"] >= 0).all()
        mapped = np.vectorize(to20.get)(r["segment200"])
        np.testing.assert_array_equal(mapped, r["segment20"])


def test_instances_are_pure_and_contiguous(rooms):
    for r in rooms:
        ids = np.unique(r["instance"])
        np.testing.assert_array_equal(ids, np.arange(len(ids)))
        for i in ids:
            assert len(np.unique(r["segment200"][r["instance"] == i])) == 1
        assert len(np.unique(r["instance"][r["segment20"] == C20["wall"]])) == 4  # one instance per wall


def test_spacing_sets_density():
    fine, coarse = generate_room(2, spacing=0.05), generate_room(2, spacing=0.08)
    ratio = len(fine["coord"]) / len(coarse["coord"])
    assert 2.0 < ratio < 3.2  # ~ (0.08 / 0.05)^2 = 2.56
    d, _ = cKDTree(fine["coord"]).query(fine["coord"], k=2)
    assert 0.015 < np.median(d[:, 1]) < 0.05


def outside(coord, room):
    "Metres outside the [0, W]×[0, D] box of an unrotated room (negative inside)"
    floor = room["coord"][room["segment20"] == C20["floor"]]
    W, D = floor[:, 0].max(), floor[:, 1].max()
    return np.maximum.reduce([-coord[:, 0], -coord[:, 1], coord[:, 0] - W, coord[:, 1] - D])


def test_geometry_separates_look_alike_classes(rooms):
    for r in rooms:
        c, seg = r["coord"], r["segment20"]
        door = c[seg == C20["door"]]
        assert -0.005 < np.median(outside(door, r)) < 0.08  # flush with or set into the wall
        pictures = c[seg == C20["picture"]]
        if len(pictures): assert -0.035 < np.median(outside(pictures, r)) < 0.0  # on the wall, at most 3 cm proud
        desk = c[seg == C20["desk"]]
        if len(desk): assert np.median(-outside(desk, r)) < 0.9 and 0.7 < desk[:, 2].max() < 0.8
        for kind, (lo, hi) in (("coffee table", (0.35, 0.5)), ("dining table", (0.7, 0.8))):
            inst = np.unique(r["instance"][r["segment200"] == SCANNET200_NAMES.index(kind)])
            for i in inst:
                top = c[r["instance"] == i, 2].max()
                assert lo < top < hi


def test_rotation_is_about_z():
    flat, turned = generate_room(4, rotate=False), generate_room(4)
    np.testing.assert_allclose(np.sort(flat["coord"][:, 2]), np.sort(turned["coord"][:, 2]), atol=1e-5)
    assert turned["coord"][:, :2].min() >= -1e-5


def test_bad_room_type():
    with pytest.raises(ValueError, match="room_type"):
        generate_room(0, room_type="garage")


def test_make_demo_data_writes_layout_once(tmp_path):
    root = make_demo_data(tmp_path / "demo", n_train=3, n_val=2, seed=1)
    assert sorted(p.name for p in (root / "train").iterdir()) == [f"demo_train_{i:03d}" for i in range(3)]
    assert sorted(p.name for p in (root / "val").iterdir()) == ["demo_val_000", "demo_val_001"]
    scene = root / "val/demo_val_001"
    assert sorted(p.stem for p in scene.iterdir()) == sorted(DEMO_ASSETS)
    expected = generate_room([1, 1, 1], room_type=ROOM_TYPES[1])
    for key in DEMO_ASSETS:
        np.testing.assert_array_equal(np.load(scene / f"{key}.npy"), expected[key])
    stamp = (scene / "coord.npy").stat().st_mtime_ns
    make_demo_data(tmp_path / "demo", n_train=3, n_val=2, seed=1)
    assert (scene / "coord.npy").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary folders left


def test_make_demo_data_rebuilds_on_other_settings(tmp_path):
    make_demo_data(tmp_path / "demo", n_train=3, n_val=1)
    make_demo_data(tmp_path / "demo", n_train=1, n_val=1, seed=2)
    assert len(list((tmp_path / "demo/train").iterdir())) == 1
    assert json.loads((tmp_path / "demo/demo.json").read_text())["seed"] == 2


def test_make_demo_data_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir(); (tmp_path / "mine/notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a demo dataset"):
        make_demo_data(tmp_path / "mine", n_train=1, n_val=1)
    assert (tmp_path / "mine/notes.txt").exists()
    with pytest.raises(ValueError, match="n_val"):
        make_demo_data(tmp_path / "x", n_train=1, n_val=0)


def test_demo_dataset_generates_and_loads(tmp_path):
    ds = build_dataset(dict(type="DemoDataset", split="val", data_root=str(tmp_path / "demo"), n_train=2, n_val=2))
    assert isinstance(ds, DemoDataset) and len(ds) == 2
    d = ds[1]
    np.testing.assert_array_equal(d["segment"], np.load(tmp_path / "demo/val/demo_val_001/segment20.npy"))
    d200 = ScanNet200Dataset(split="val", data_root=tmp_path / "demo")[1]
    np.testing.assert_array_equal(d200["segment"], np.load(tmp_path / "demo/val/demo_val_001/segment200.npy"))


def test_demo_dataset_through_the_training_pipeline(tmp_path):
    transform = [dict(type="CenterShift", apply_z=True),
                 dict(type="GridSample", grid_size=0.02, hash_type="fnv", mode="train", return_grid_coord=True),
                 dict(type="NormalizeColor"), dict(type="ToTensor"),
                 dict(type="Collect", keys=("coord", "grid_coord", "segment"), feat_keys=("coord", "color", "normal"))]
    ds = DemoDataset(split="train", data_root=tmp_path / "demo", n_train=2, n_val=1, transform=transform)
    batch = point_collate_fn([ds[0], ds[1]])
    assert batch["feat"].shape[1] == 9 and batch["offset"].shape == (2,)
    assert batch["feat"][:, 3:6].max() <= 1 and batch["segment"].dtype == torch.long


def test_doors_need_colour_or_inset():
    "Flush doors differ from their wall in colour; doors painted like the wall are recessed"
    kinds = set()
    for seed in range(24):
        r = generate_room(seed, rotate=False)
        door, wall = r["segment20"] == C20["door"], r["segment20"] == C20["wall"]
        inset = np.median(outside(r["coord"][door], r))
        contrast = np.abs(np.median(r["color"][door], 0) - np.median(r["color"][wall], 0)).max()
        assert inset > 0.02 or contrast > 25, (seed, inset, contrast)
        kinds.add((inset > 0.02, contrast > 25))
    assert (False, True) in kinds and (True, False) in kinds  # both cues are needed somewhere
