"""Every shipped config: loads, resolves `_base_`, round-trips through dump, builds its model, criteria and pipelines,
and carries the reference recipe's values (Pointcept configs/sonata/semseg-sonata-v1m1-*.py)."""
from pathlib import Path
import numpy as np
import pytest
import torch
from sonata_nb.config import Config, default_config_parser
from sonata_nb.losses import build_criteria
from sonata_nb.runtime import count_parameters
from sonata_nb.segmentor import build_model
from sonata_nb.transforms import Compose
from sonata_nb.datasets import build_dataset, collate_fn, point_collate_fn
import sonata_nb  # noqa: F401  (registers every built-in component, DemoDataset included)

ROOT = Path(__file__).resolve().parents[1] / "configs"
SONATA = sorted((ROOT / "sonata").glob("semseg-sonata-v1m1-*.py"))
DEMO = sorted((ROOT / "demo").glob("semseg-demo-*.py"))
ALL = SONATA + DEMO
ids = lambda p: p.stem
SCANNET20 = ["wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
             "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub", "otherfurniture"]
S3DIS = ["ceiling", "floor", "wall", "beam", "column", "window", "door", "table", "chair", "sofa", "bookcase", "board", "clutter"]
TRAIN_ORDER = ["CenterShift", "RandomDropout", "RandomRotate", "RandomRotate", "RandomRotate", "RandomScale", "RandomFlip",
               "RandomJitter", "ElasticDistortion", "ChromaticAutoContrast", "ChromaticTranslation", "ChromaticJitter",
               "GridSample", "SphereCrop", "CenterShift", "NormalizeColor", "ToTensor", "Collect"]
HOOKS = [dict(type="CheckpointLoader", keywords="module.student.backbone", replacement="module.backbone"),
         dict(type="IterationTimer", warmup_iter=2), dict(type="InformationWriter"), dict(type="SemSegEvaluator"),
         dict(type="CheckpointSaver", save_freq=None), dict(type="PreciseEvaluator", test_last=False)]
ENCODER = dict(type="PT-v3m2", in_channels=9, order=("z", "z-trans", "hilbert", "hilbert-trans"), stride=(2, 2, 2, 2),
               enc_depths=(3, 3, 3, 12, 3), enc_channels=(48, 96, 192, 384, 512), enc_num_head=(3, 6, 12, 24, 32),
               enc_patch_size=(1024,) * 5, mlp_ratio=4, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0,
               drop_path=0.3, shuffle_orders=True, pre_norm=True, enable_rpe=False, enable_flash=True,
               upcast_attention=False, upcast_softmax=False, traceable=False, mask_token=False)
DECODER = dict(dec_depths=(2, 2, 2, 2), dec_channels=(64, 96, 192, 384), dec_num_head=(4, 6, 12, 24),
               dec_patch_size=(1024,) * 4)


def mode_of(path):
    return {"lin": "lin", "dec": "dec", "ft": "ft"}[path.stem.rsplit("-", 1)[1]]


def test_all_configs_present():
    names = {p.stem for p in ALL}
    for code in ("0a-scannet-lin", "0b-scannet-dec", "0c-scannet-ft", "1a-scannet200-lin", "1b-scannet200-dec",
                 "1c-scannet200-ft", "3a-s3dis-lin", "3b-s3dis-dec", "3c-s3dis-ft"):
        assert f"semseg-sonata-v1m1-{code}" in names
    assert {f"semseg-demo-{m}" for m in ("lin", "dec", "ft")} <= names


def test_default_runtime():
    base = Config.fromfile(ROOT / "_base_/default_runtime.py")
    assert base.enable_wandb is False and base.wandb_key is None
    expected = dict(weight=None, resume=False, evaluate=True, test_only=False, seed=None, save_path="exp/default",
                    num_worker=16, batch_size=16, batch_size_val=None, batch_size_test=None, epoch=100, eval_epoch=100,
                    clip_grad=None, sync_bn=False, enable_amp=False, amp_dtype="float16", empty_cache=False,
                    empty_cache_per_epoch=False, find_unused_parameters=False, mix_prob=0, param_dicts=None,
                    train=dict(type="DefaultTrainer"), test=dict(type="SemSegTester", verbose=True))
    for k, v in expected.items():
        assert base[k] == v, k
    assert [h.type for h in base.hooks] == ["CheckpointLoader", "ModelHook", "IterationTimer", "InformationWriter",
                                            "SemSegEvaluator", "CheckpointSaver", "PreciseEvaluator"]


@pytest.mark.parametrize("path", ALL, ids=ids)
def test_loads_parses_and_round_trips(path, tmp_path):
    cfg = default_config_parser(path, ["seed=1"])
    assert "_base_" not in cfg and cfg.seed == 1
    assert cfg.data.train.loop == cfg.epoch // cfg.eval_epoch
    cfg.dump(tmp_path / "config.py")
    assert Config.fromfile(tmp_path / "config.py") == cfg
    assert cfg.model.num_classes == cfg.data.num_classes == len(cfg.data.names)


@pytest.mark.parametrize("path", SONATA, ids=ids)
def test_sonata_recipe_values(path):
    cfg = Config.fromfile(path)
    mode, s3dis, sn200 = mode_of(path), "s3dis" in path.stem, "scannet200" in path.stem
    k = 13 if s3dis else 200 if sn200 else 20
    assert (cfg.batch_size, cfg.num_worker, cfg.mix_prob, cfg.clip_grad, cfg.empty_cache, cfg.enable_amp) == (24, 48, 0.8, 3.0, False, True)
    assert cfg.amp_dtype == "float16" and cfg.eval_epoch == 100 and cfg.seed is None and cfg.weight is None
    assert cfg.epoch == (3000 if s3dis else 800)
    assert cfg.optimizer == dict(type="AdamW", lr=0.002, weight_decay=0.02)
    assert cfg.scheduler == dict(type="OneCycleLR", max_lr=[0.002, 0.0002], pct_start=0.05, anneal_strategy="cos",
                                 div_factor=10.0, final_div_factor=1000.0)
    assert cfg.param_dicts == [dict(keyword="block", lr=0.0002)]
    assert cfg.hooks == HOOKS
    m = cfg.model
    assert m.type == "DefaultSegmentorV2" and m.num_classes == k
    assert m.criteria == [dict(type="CrossEntropyLoss", loss_weight=1.0, ignore_index=-1),
                          dict(type="LovaszLoss", mode="multiclass", loss_weight=1.0, ignore_index=-1)]
    assert m.freeze_backbone is (mode == "lin")
    assert m.backbone_out_channels == (1232 if mode == "lin" else 64)
    for key, value in ENCODER.items():
        assert m.backbone[key] == value, key
    assert m.backbone.enc_mode is (mode == "lin") and m.backbone.freeze_encoder is (mode == "dec")
    if mode != "lin":
        for key, value in DECODER.items():
            assert m.backbone[key] == value, key
    d = cfg.data
    assert d.num_classes == k and d.ignore_index == -1
    if s3dis:
        assert list(d.names) == S3DIS
    elif not sn200:
        assert list(d.names) == SCANNET20
    else:
        from sonata_nb.classes import CLASS_LABELS_200
        assert tuple(d.names) == tuple(CLASS_LABELS_200) and d.names[:3] == ("wall", "chair", "floor")
    dtype = "S3DISDataset" if s3dis else "ScanNet200Dataset" if sn200 else "ScanNetDataset"
    assert d.train.type == d.val.type == d.test.type == dtype
    assert d.train.data_root == d.val.data_root == d.test.data_root == ("data/s3dis" if s3dis else "data/scannet")
    assert d.train.split == (("Area_1", "Area_2", "Area_3", "Area_4", "Area_6") if s3dis else "train")
    assert d.val.split == d.test.split == ("Area_5" if s3dis else "val")
    assert d.train.test_mode is False and d.val.test_mode is False and d.test.test_mode is True
    train = [t.type for t in d.train.transform]
    assert train == (TRAIN_ORDER[:14] + ["SphereCrop"] + TRAIN_ORDER[14:] if s3dis else TRAIN_ORDER)
    t = d.train.transform
    assert t[1] == dict(type="RandomDropout", dropout_ratio=0.2, dropout_application_ratio=1.0)
    assert t[2] == dict(type="RandomRotate", angle=[-1, 1], axis="z", center=[0, 0, 0], p=0.5)
    assert t[3] == dict(type="RandomRotate", angle=[-1 / 64, 1 / 64], axis="x", p=0.5)
    assert t[8] == dict(type="ElasticDistortion", distortion_params=[[0.2, 0.4], [0.8, 1.6]])
    assert t[9:12] == [dict(type="ChromaticAutoContrast", p=0.2, blend_factor=None),
                       dict(type="ChromaticTranslation", p=0.95, ratio=0.05), dict(type="ChromaticJitter", p=0.95, std=0.05)]
    assert t[12] == dict(type="GridSample", grid_size=0.02, hash_type="fnv", mode="train", return_grid_coord=True)
    crops = [x for x in t if x.type == "SphereCrop"]
    assert crops == ([dict(type="SphereCrop", sample_rate=0.6, mode="random"), dict(type="SphereCrop", point_max=204800, mode="random")]
                     if s3dis else [dict(type="SphereCrop", point_max=102400, mode="random")])
    assert t[-1] == dict(type="Collect", keys=("coord", "grid_coord", "segment"), feat_keys=("coord", "color", "normal"))
    val = d.val.transform
    assert [x.type for x in val] == ["CenterShift", "Copy", "GridSample", "CenterShift", "NormalizeColor", "ToTensor", "Collect"]
    assert val[2].return_inverse is True and val[-1]["keys"] == ("coord", "grid_coord", "segment", "origin_segment", "inverse")
    test = d.test
    pre = [x.type for x in test.transform]
    assert pre == (["CenterShift", "NormalizeColor", "Copy", "GridSample"] if s3dis else ["CenterShift", "NormalizeColor"])
    if s3dis:
        assert test.transform[3] == dict(type="GridSample", grid_size=0.01, hash_type="fnv", mode="train", return_inverse=True)
    assert test.test_cfg.voxelize == dict(type="GridSample", grid_size=0.02, hash_type="fnv", mode="test", return_grid_coord=True)
    assert test.test_cfg.crop is None
    augs = test.test_cfg.aug_transform
    assert len(augs) == 13 and augs[-1] == [dict(type="RandomFlip", p=1)]
    angles = [a[0].angle for a in augs[:12]]
    assert angles == [[0], [1 / 2], [1], [3 / 2]] * 3
    assert [a[1].scale if len(a) > 1 else None for a in augs[:12]] == [None] * 4 + [[0.95, 0.95]] * 4 + [[1.05, 1.05]] * 4


@pytest.mark.parametrize("path", SONATA, ids=ids)
def test_sonata_models_on_meta_device(path):
    cfg = Config.fromfile(path)
    k = cfg.model.num_classes
    with torch.device("meta"):
        model = build_model(cfg.model)
    decoder, encoder = 16_331_520, 108_461_328
    expected = {"lin": 1232 * k + k, "dec": decoder + 64 * k + k, "ft": encoder + decoder + 64 * k + k}[mode_of(path)]
    assert count_parameters(model) == expected
    if k == 20:
        assert count_parameters(model) == {"lin": 24_660, "dec": 16_332_820, "ft": 124_794_148}[mode_of(path)]
    criteria = build_criteria(cfg.model.criteria)
    assert [type(c).__name__ for c in criteria.losses] == ["CrossEntropyLoss", "LovaszLoss"]


def write_scene(folder, n, rng, k):
    folder.mkdir(parents=True)
    coord = rng.uniform(0, [3.0, 2.5, 2.0], (n, 3)).astype(np.float32)
    coord[n // 2:] = coord[:n - n // 2] + 0.001  # near-duplicates: grid sampling at 1-2 cm drops points
    normal = rng.normal(size=(n, 3)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    np.save(folder / "coord.npy", coord)
    np.save(folder / "color.npy", rng.integers(0, 256, (n, 3)).astype(np.uint8))
    np.save(folder / "normal.npy", normal)
    for name in ("segment20", "segment200", "segment"):
        np.save(folder / f"{name}.npy", rng.integers(-1, k, n).astype(np.int64))


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("data")
    for split in ("train", "val"):
        for i in range(2):
            write_scene(root / "scannet" / split / f"scene000{i}_00", 2500, rng, 20)
    for area in range(1, 7):
        write_scene(root / "s3dis" / f"Area_{area}" / "office_1", 2500, rng, 13)
    return root


def with_root(dataset_cfg, cfg, data_roots, tmp_path):
    root = {"ScanNetDataset": data_roots / "scannet", "ScanNet200Dataset": data_roots / "scannet",
            "S3DISDataset": data_roots / "s3dis", "DemoDataset": tmp_path / "demo"}[dataset_cfg["type"]]
    return {**dataset_cfg.to_dict(), "data_root": str(root)}


@pytest.mark.parametrize("path", ALL, ids=ids)
def test_pipelines_run_on_a_synthetic_scene(path, data_roots, tmp_path):
    cfg = default_config_parser(path, ["seed=0"])
    train = build_dataset(with_root(cfg.data.train, cfg, data_roots, tmp_path))
    assert len(train) == len(train.data_list) * cfg.data.train.loop
    samples = [train[i] for i in range(2)]
    for s in samples:
        assert set(s) >= {"coord", "grid_coord", "segment", "feat", "offset"}
        assert s["feat"].shape == (len(s["coord"]), 9) and s["feat"].dtype == torch.float32
        assert 0 <= s["feat"][:, 3:6].min() and s["feat"][:, 3:6].max() <= 1  # normalised colour
        assert s["grid_coord"].min() >= 0 and s["segment"].dtype == torch.int64
    batch = point_collate_fn(samples, mix_prob=cfg.mix_prob)
    assert batch["offset"][-1] == sum(len(s["coord"]) for s in samples)
    val = build_dataset(with_root(cfg.data.val, cfg, data_roots, tmp_path))
    v = val[0]
    assert len(v["inverse"]) == len(v["origin_segment"]) and v["inverse"].max() < len(v["coord"])
    test = build_dataset(with_root(cfg.data.test, cfg, data_roots, tmp_path))
    t = test[0]
    n_aug = len(cfg.data.test.test_cfg.aug_transform)
    assert len(t["fragment_list"]) >= n_aug
    frag = t["fragment_list"][0]
    assert set(frag) >= {"coord", "grid_coord", "index", "feat", "offset"} and frag["feat"].shape[1] == 9
    if "s3dis" in path.stem:  # 1 cm pre-sampling mapped back to the raw points
        assert "inverse" in t and len(t["origin_segment"]) == 2500 and len(t["segment"]) < 2500


def test_train_pipeline_by_hand_reaches_model_input():
    "The Sonata train transforms, built with Compose, turn a raw scene into the 9-channel model input"
    cfg = Config.fromfile(ROOT / "sonata/semseg-sonata-v1m1-0a-scannet-lin.py")
    rng = np.random.default_rng(1)
    n = 4000
    scene = dict(coord=rng.uniform(0, 4, (n, 3)).astype(np.float32), color=rng.uniform(0, 255, (n, 3)).astype(np.float32),
                 normal=np.tile(np.array([[0, 0, 1]], np.float32), (n, 1)), segment=rng.integers(-1, 20, n))
    out = Compose(cfg.data.train.transform, seed=0)(scene)
    assert sorted(out) == ["coord", "feat", "grid_coord", "offset", "segment"]
    assert out["feat"].shape[1] == 9 and len(out["coord"]) < n  # dropout and 2 cm grid sampling removed points
    assert torch.equal(out["feat"][:, :3], out["coord"])


@pytest.mark.parametrize("mode", ["ft", "lin"])
def test_demo_models_train_step(mode, tmp_path):
    cfg = default_config_parser(ROOT / f"demo/semseg-demo-{mode}.py", ["seed=0"])
    model = build_model(cfg.model)
    assert count_parameters(model) == (256 * 20 + 20 if mode == "lin" else sum(p.numel() for p in model.parameters()))
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    train = build_dataset({**cfg.data.train.to_dict(), "data_root": str(tmp_path / "demo"), "n_train": 2, "n_val": 1})
    batch = point_collate_fn([train[0], train[1]], mix_prob=0)
    model.train()
    loss = model(batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and model.seg_head.weight.grad is not None


def test_every_runtime_key_is_a_known_config_key():
    "The runtime defaults and `CONFIG_KEYS` (what config files are checked against) list the same keys"
    from sonata_nb.config import CONFIG_KEYS
    runtime = set(Config.fromfile(ROOT / "_base_/default_runtime.py"))
    assert runtime <= set(CONFIG_KEYS), sorted(runtime - set(CONFIG_KEYS))
    assert set(CONFIG_KEYS) - runtime == {"model", "data", "optimizer", "scheduler", "dataset_type", "data_root", "epoch", "eval_epoch",
                                          "gradient_accumulation_steps"} - runtime
