"Dataset loading, data-efficiency subsets, test-mode fragments and collate functions (sonata_nb.datasets)."
import json
import random

import numpy as np
import pytest
import torch

from sonata_nb.datasets import (DATASETS, CustomDataset, DefaultDataset, S3DISDataset, ScanNet200Dataset, ScanNetDataset,
                                build_dataset, collate_fn, point_collate_fn, s3dis_6fold)


def write_scene(folder, n, seed, segment_key="segment20", num_classes=20, skip=()):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    normal = rng.normal(size=(n, 3))
    arrays = dict(coord=(rng.random((n, 3)) * [3, 3, 1.5]).astype(np.float32),
                  color=rng.integers(0, 256, (n, 3)).astype(np.uint8),
                  normal=(normal / np.linalg.norm(normal, axis=1, keepdims=True)).astype(np.float32),
                  instance=rng.integers(-1, 10, n))
    arrays[segment_key] = rng.integers(-1, num_classes, n)
    for key, value in arrays.items():
        if key not in skip: np.save(folder / f"{key}.npy", value)
    return arrays


@pytest.fixture
def scannet(tmp_path):
    root = tmp_path / "scannet"
    for split, count in (("train", 5), ("val", 2)):
        for i in range(count):
            scene = root / split / f"scene{i:04d}_00"
            write_scene(scene, 300 + 50 * i, seed=100 * (split == "val") + i)
            np.save(scene / "segment200.npy", np.random.default_rng(i).integers(-1, 200, 300 + 50 * i))
    return root


TEST_CFG = dict(
    voxelize=dict(type="GridSample", grid_size=0.25, hash_type="fnv", mode="test", return_grid_coord=True),
    crop=None,
    post_transform=[dict(type="CenterShift", apply_z=False), dict(type="ToTensor"),
                    dict(type="Collect", keys=("coord", "grid_coord", "index"), feat_keys=("coord", "color", "normal"))],
    aug_transform=[[dict(type="RandomRotateTargetAngle", angle=[a], axis="z", center=[0, 0, 0], p=1)] for a in (0, 0.5, 1)])


def test_registry_and_build(scannet):
    for name in ("DefaultDataset", "ScanNetDataset", "ScanNet200Dataset", "S3DISDataset", "CustomDataset"):
        assert name in DATASETS
    ds = build_dataset(dict(type="ScanNetDataset", split="train", data_root=str(scannet), loop=3))
    assert isinstance(ds, ScanNetDataset) and len(ds) == 15


def test_loop_len_names_and_dtypes(scannet):
    ds = ScanNetDataset(split="train", data_root=scannet, loop=2)
    assert len(ds) == 10
    assert [ds.get_data_name(i) for i in range(10)] == [f"scene{i % 5:04d}_00" for i in range(10)]
    d = ds[7]
    assert d["name"] == "scene0002_00" and d["split"] == "train"
    assert d["coord"].dtype == np.float32 and d["color"].dtype == np.float32 and d["normal"].dtype == np.float32
    assert d["segment"].dtype == np.int64 and d["segment"].shape == (400,)
    np.testing.assert_array_equal(d["segment"], np.load(scannet / "train/scene0002_00/segment20.npy"))
    np.testing.assert_array_equal(d["color"], np.load(scannet / "train/scene0002_00/color.npy").astype(np.float32))
    assert "segment20" not in d and "segment200" not in d
    d200 = ScanNet200Dataset(split="train", data_root=scannet)[2]
    np.testing.assert_array_equal(d200["segment"], np.load(scannet / "train/scene0002_00/segment200.npy"))
    assert len(ScanNetDataset(split=["train", "val"], data_root=scannet)) == 7


def test_test_mode_forces_loop_one(scannet):
    assert len(ScanNetDataset(split="val", data_root=scannet, loop=5, test_mode=True, test_cfg=TEST_CFG)) == 2


def test_json_split_file(scannet):
    (scannet / "subset.json").write_text(json.dumps(["train/scene0003_00", "val/scene0001_00"]))
    ds = ScanNetDataset(split="subset.json", data_root=scannet)
    assert [ds.get_data_name(i) for i in range(2)] == ["scene0003_00", "scene0001_00"]
    assert ds[1]["split"] == "val"


def test_missing_labels_become_ignore(tmp_path):
    write_scene(tmp_path / "custom/test/scan", 200, 0, segment_key="segment", skip=("segment", "instance"))
    d = CustomDataset(split="test", data_root=tmp_path / "custom")[0]
    assert (d["segment"] == -1).all() and (d["instance"] == -1).all() and d["segment"].shape == (200,)


def test_errors_name_the_folder(tmp_path, scannet):
    with pytest.raises(FileNotFoundError, match="nowhere/train"):
        ScanNetDataset(split="train", data_root=tmp_path / "nowhere")
    (scannet / "test").mkdir()
    with pytest.raises(FileNotFoundError, match="no scene folders"):
        ScanNetDataset(split="test", data_root=scannet)
    (scannet / "train/scene0001_00/coord.npy").unlink()
    with pytest.raises(ValueError, match="scene0001_00: no coord.npy"):  # refused when built, before any loading
        ScanNetDataset(split="train", data_root=scannet)
    with pytest.raises(FileNotFoundError, match="scene0001_00.*coord.npy"):  # unchecked: refused when loaded
        ScanNetDataset(split="train", data_root=scannet, check="off")[1]
    np.save(scannet / "train/scene0002_00/normal.npy", np.zeros((10, 3), np.float32))
    with pytest.raises(ValueError, match="scene0002_00/normal.npy: 10 rows but coord.npy has"):
        ScanNetDataset(split="train", data_root=scannet, check="lengths")
    with pytest.raises(ValueError, match="scene0002_00.*normal.npy has 10 rows"):
        ScanNetDataset(split="train", data_root=scannet, check="off")[2]
    with pytest.raises(ValueError, match="points_per_scene"):
        ScanNetDataset(split="val", data_root=scannet, points_per_scene=0)


def test_scene_fraction_is_seeded(scannet):
    lists = {seed: ScanNetDataset(split="train", data_root=scannet, scene_fraction=0.6, subset_seed=seed).data_list
             for seed in range(6)}
    assert all(len(v) == 3 for v in lists.values())
    assert lists[0] == ScanNetDataset(split="train", data_root=scannet, scene_fraction=0.6, subset_seed=0).data_list
    assert len({tuple(v) for v in lists.values()}) > 1  # different seeds, different subsets
    assert all(v == sorted(v) for v in lists.values())
    assert len(ScanNetDataset(split="train", data_root=scannet, scene_fraction=0.01).data_list) == 1


def test_points_per_scene_is_seeded_per_scene(scannet):
    full = ScanNetDataset(split="train", data_root=scannet)
    ds = ScanNetDataset(split="train", data_root=scannet, points_per_scene=25, loop=2)
    for i in range(5):
        seg, ref = ds[i]["segment"], full[i]["segment"]
        kept = seg != -1
        assert kept.sum() == 25
        np.testing.assert_array_equal(seg[kept], ref[kept])
        np.testing.assert_array_equal(seg, ds[i + 5]["segment"])  # same labels every epoch
    other = ScanNetDataset(split="train", data_root=scannet, points_per_scene=25, subset_seed=1)
    assert not np.array_equal(other[0]["segment"] != -1, ds[0]["segment"] != -1)
    many = ScanNetDataset(split="train", data_root=scannet, points_per_scene=10**6)[0]["segment"]
    np.testing.assert_array_equal(many, full[0]["segment"])  # more than available: all labels kept


def test_s3dis_names_and_folds(tmp_path):
    for area in ("Area_1", "Area_5"):
        write_scene(tmp_path / "s3dis" / area / "office_1", 100, 0, segment_key="segment", num_classes=13)
    ds = S3DISDataset(split=("Area_1", "Area_5"), data_root=tmp_path / "s3dis")
    assert [ds[i]["name"] for i in range(2)] == ["Area_1-office_1", "Area_5-office_1"]
    folds = s3dis_6fold()
    assert len(folds) == 6 and [t for _, t in folds] == [f"Area_{i}" for i in range(1, 7)]
    assert all(len(train) == 5 and test not in train for train, test in folds)


def test_test_mode_fragments_cover_every_point(scannet):
    ds = ScanNetDataset(split="val", data_root=scannet, test_mode=True, test_cfg=TEST_CFG,
                        transform=[dict(type="CenterShift", apply_z=True), dict(type="NormalizeColor")])
    out = ds[1]
    n = len(np.load(scannet / "val/scene0001_00/coord.npy"))
    assert out["name"] == "scene0001_00" and len(out["segment"]) == n
    np.testing.assert_array_equal(out["segment"], np.load(scannet / "val/scene0001_00/segment20.npy"))
    frags = out["fragment_list"]
    assert len(frags) % 3 == 0  # the same number of fragments per augmentation
    per_aug = len(frags) // 3
    for a in range(3):
        idx = torch.cat([f["index"] for f in frags[a * per_aug:(a + 1) * per_aug]])
        assert torch.equal(idx.unique(), torch.arange(n))
    for f in frags:
        assert set(f) >= {"coord", "grid_coord", "index", "feat", "offset"} and f["feat"].shape[1] == 9
        assert f["grid_coord"].shape[0] == len(torch.unique(f["grid_coord"], dim=0))  # one point per voxel


def test_test_mode_keeps_origin_segment_and_inverse(scannet):
    transform = [dict(type="CenterShift", apply_z=True), dict(type="NormalizeColor"),
                 dict(type="Copy", keys_dict={"segment": "origin_segment"}),
                 dict(type="GridSample", grid_size=0.1, hash_type="fnv", mode="train", return_inverse=True)]
    out = ScanNetDataset(split="val", data_root=scannet, test_mode=True, test_cfg=TEST_CFG, transform=transform)[0]
    raw = np.load(scannet / "val/scene0000_00/segment20.npy")
    assert {"origin_segment", "inverse"} <= set(out)
    np.testing.assert_array_equal(out["origin_segment"], raw)
    assert len(out["inverse"]) == len(raw) and len(out["segment"]) < len(raw)
    seg, inv = out["segment"], out["inverse"]
    represented = np.zeros(len(seg), bool)
    represented[inv[seg[inv] == raw]] = True
    assert represented.all()  # every kept point's label is the raw label of a point in its voxel
    covered = torch.cat([f["index"] for f in out["fragment_list"]]).unique()
    assert torch.equal(covered, torch.arange(len(out["segment"])))


def sample(n, first_instance=0):
    return dict(coord=torch.rand(n, 3), segment=torch.randint(0, 5, (n,)),
                instance=torch.where(torch.arange(n) % 4 == 0, -1, first_instance + torch.arange(n) % 3),
                offset=torch.tensor([n]), name="x")


def test_collate_concatenates_and_accumulates_offsets():
    batch = [sample(3), sample(5), sample(4)]
    out = collate_fn(batch)
    assert torch.equal(out["offset"], torch.tensor([3, 8, 12]))
    assert torch.equal(out["coord"], torch.cat([b["coord"] for b in batch]))
    assert out["name"] == ["x"] * 3
    two = [dict(coord=torch.rand(5, 3), offset=torch.tensor([2, 5]), origin_offset=torch.tensor([4, 9])),
           dict(coord=torch.rand(3, 3), offset=torch.tensor([3]), origin_offset=torch.tensor([6]))]
    out = collate_fn(two)
    assert torch.equal(out["offset"], torch.tensor([2, 5, 8])) and torch.equal(out["origin_offset"], torch.tensor([4, 9, 15]))
    lists = collate_fn([[torch.rand(2, 3), torch.rand(2)], [torch.rand(4, 3), torch.rand(4)]])
    assert torch.equal(lists[-1], torch.tensor([2, 6], dtype=torch.int32))


def test_mix3d_merges_pairs():
    batch = [sample(4), sample(6), sample(5), sample(3), sample(2)]
    plain = point_collate_fn([dict(b) for b in batch], mix_prob=0)
    assert torch.equal(plain["offset"], torch.tensor([4, 10, 15, 18, 20]))
    mixed = point_collate_fn([{k: (v.clone() if torch.is_tensor(v) else v) for k, v in b.items()} for b in batch], mix_prob=1)
    assert torch.equal(mixed["offset"], torch.tensor([10, 18, 20]))  # (0,1), (2,3), 4 alone
    inst, ref = mixed["instance"], plain["instance"]
    for lo, hi, shift_from in ((4, 10, (0, 4)), (15, 18, (10, 15))):
        shift = ref[shift_from[0]:shift_from[1]].max()
        seg = ref[lo:hi]
        assert torch.equal(inst[lo:hi], torch.where(seg == -1, seg, seg + shift))
    assert torch.equal(inst[:4], ref[:4]) and torch.equal(inst[10:15], ref[10:15]) and torch.equal(inst[18:], ref[18:])


def test_mix3d_probability():
    random.seed(0)
    merged = sum(len(point_collate_fn([sample(2), sample(2)], mix_prob=0.3)["offset"]) == 1 for _ in range(400))
    assert 80 < merged < 160
