"Cached linear probing (sonata_nb.lincache): exact features, cache layout, training and evaluation, damaged or foreign caches."
import json, os, subprocess, sys, zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from sonata_nb.config import default_config_parser
from sonata_nb.datasets import build_dataset, collate_fn
from sonata_nb.lincache import (CacheMismatch, FeatureCache, LinCacheTrainer, build_cache, cache_fingerprint,
                                cache_problems, open_cache)
from sonata_nb.metrics import SegMetrics
from sonata_nb.model import save_checkpoint
from sonata_nb.runtime import to_plain
from sonata_nb.segmentor import build_model
from sonata_nb.trainer import SampleSeeded, set_seed

ROOT = Path(__file__).resolve().parents[2]
LIN = ROOT/"configs"/"demo"/"semseg-demo-lin.py"


def tiny_cfg(root, save, weight=None, **opts):
    "The demo lin config on 2 tiny rooms with a 2-stage encoder (24 up-cast channels)"
    o = {"seed": 0, "num_worker": 0, "batch_size": 2, "epoch": 2, "eval_epoch": 2, "save_path": str(save),
         "log_interval": 1, "data.train.transform.13.point_max": 512, "model.backbone_out_channels": 24,
         "model.backbone.enc_depths": (1, 1), "model.backbone.enc_channels": (8, 16), "model.backbone.enc_num_head": (1, 2),
         "model.backbone.enc_patch_size": (64, 64), "model.backbone.stride": (2,), "weight": weight}
    for split in ("train", "val", "test"):
        o |= {f"data.{split}.data_root": str(root), f"data.{split}.n_train": 2, f"data.{split}.n_val": 1,
              f"data.{split}.spacing": 0.15}
    return default_config_parser(LIN, o | opts)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    "(data root, encoder weight file, the segmentor with that encoder)"
    from sonata_nb.demo import make_demo_data
    tmp = tmp_path_factory.mktemp("lincache")
    root = make_demo_data(tmp/"demo", n_train=2, n_val=1, seed=0, spacing=0.15)
    torch.manual_seed(0)
    model = build_model(tiny_cfg(root, tmp/"x").model)
    weight = save_checkpoint(model.backbone, tmp/"encoder.pth")
    return root, str(weight), model


def on_the_fly(model, cfg, keys, mode, seed_key=None):
    "Features of the views `keys` ((k, i) pairs) computed now, in one encoder call"
    data = build_dataset(dict(to_plain(cfg.data.train), loop=1))
    samples = [SampleSeeded(data, cfg.seed)[k] for k in keys]
    model.eval(); model.backbone.train(mode == "train")
    if seed_key is not None: set_seed(zlib.crc32(seed_key.encode()))
    with torch.no_grad(): feat = model.features(collate_fn(samples))
    model.eval()
    return feat, samples


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_cached_features_equal_on_the_fly_ones(setup, tmp_path, mode):
    "Every cached view equals the encoder's features of the same seeded view (fp16 rounding), labels exactly"
    root, weight, model = setup
    cfg = tiny_cfg(root, tmp_path/"exp", weight)
    cache = build_cache(tmp_path/"cache", cfg, model, views=2, encoder_mode=mode, batch_views=1 if mode == "train" else 4)
    for k in range(2):
        for i in range(2):
            # train mode: the encoder's own draws (drop path, order shuffling) are seeded per cached chunk
            ref, (sample,) = on_the_fly(model, cfg, [(k, i)], mode, f"{cfg.seed}/lincache/{[(k, i)]}" if mode == "train" else None)
            feat, seg = cache.view(i, k)
            got = torch.from_numpy(np.array(feat)).float()
            assert got.shape == ref.shape
            assert (got - ref).abs().max() <= 1e-3 * ref.abs().max() + 1e-6
            assert np.array_equal(seg.astype(np.int64), sample["segment"].numpy())


def test_cache_layout_size_dtype(setup, tmp_path):
    root, weight, model = setup
    cfg = tiny_cfg(root, tmp_path/"exp", weight)
    cache = build_cache(tmp_path/"cache", cfg, model, views=3, encoder_mode="eval")
    data = build_dataset(dict(to_plain(cfg.data.train), loop=1))
    sizes = {(i, k): len(SampleSeeded(data, cfg.seed)[(k, i)]["coord"]) for k in range(3) for i in range(2)}
    n, c = sum(sizes.values()), 24
    assert cache.feat.dtype == np.float16 and cache.feat.shape == (n, c) and isinstance(cache.feat, np.memmap)
    assert cache.segment.dtype == np.int16 and cache.segment.shape == (n,)
    assert {(i, k): e - s for (i, k), (s, e) in cache.rows.items()} == sizes
    assert (tmp_path/"cache"/"feat.bin").stat().st_size == n * c * 2
    assert cache.nbytes == sum((tmp_path/"cache"/f).stat().st_size for f in ("feat.bin", "segment.bin", "index.npy"))
    assert sorted(p.name for p in (tmp_path/"cache").iterdir()) == ["feat.bin", "index.npy", "meta.json", "segment.bin"]
    assert not (tmp_path/"cache.building").exists()


def validate_plain(cfg, state_dict):
    "mIoU of a plain DefaultSegmentorV2 with `state_dict` on the seeded val inputs (the metric code of Trainer.validate)"
    model = build_model(cfg.model); model.load_state_dict(state_dict); model.eval()
    data = build_dataset(to_plain(cfg.data.val))
    metrics = SegMetrics(cfg.data.num_classes, cfg.data.ignore_index)
    with torch.no_grad():
        for i in range(len(data)):
            batch = collate_fn([SampleSeeded(data, cfg.seed)[(0, i)]])
            pred = model(batch)["seg_logits"].argmax(1)[batch["inverse"]]
            metrics.add(pred, batch["origin_segment"])
    return metrics.compute()["mIoU"]


def test_training_on_the_cache(setup, tmp_path):
    "The loss goes down; the schedule has the on-the-fly run's steps; validation is the normal metric code"
    root, weight, _ = setup
    cfg = tiny_cfg(root, tmp_path/"exp", weight, epoch=16, eval_epoch=2, **{"optimizer.lr": 0.05, "scheduler.max_lr": [0.05, 0.05]})
    t = LinCacheTrainer(cfg, views=4, encoder_mode="eval")
    assert t.total_steps == 2 * 8 * 2 // 2  # rooms x passes per cycle x cycles / batch: as Trainer's own loader
    t.train()
    recs = [json.loads(l) for l in (tmp_path/"exp"/"log"/"metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if r["type"] == "train"]
    assert len(losses) == 16 and np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    val = [r for r in recs if r["type"] == "val"]
    ckpt = torch.load(tmp_path/"exp"/"model"/"model_last.pth", weights_only=True)
    assert set(ckpt["state_dict"]) == set(build_model(cfg.model).state_dict())  # a usual lin checkpoint
    assert val[-1]["mIoU"] == pytest.approx(validate_plain(cfg, ckpt["state_dict"]), abs=1e-9)
    assert (tmp_path/"exp"/"result").is_dir()  # the precise evaluation (tester) ran on model_best


def test_damaged_cache_is_rebuilt_naming_the_file(setup, tmp_path, caplog):
    root, weight, model = setup
    cfg = tiny_cfg(root, tmp_path/"exp", weight)
    folder = tmp_path/"cache"
    cache = build_cache(folder, cfg, model, views=2, encoder_mode="eval")
    good = np.array(cache.feat)
    fp = cache.meta["fingerprint"]
    with open(folder/"feat.bin", "r+b") as f: f.seek(10); f.write(b"\xff\x7f")  # a flipped value
    assert cache_problems(folder, fp) == [f"{folder/'feat.bin'} fails its sha256 check (corrupted)"]
    with pytest.raises(CacheMismatch, match="feat.bin fails its sha256"):
        open_cache(folder, cfg, model, views=2, encoder_mode="eval", on_mismatch="error")
    os.truncate(folder/"segment.bin", 10)
    assert any("segment.bin has 10 bytes" in p for p in cache_problems(folder, fp))
    with caplog.at_level("WARNING", logger="sonata_nb"):
        rebuilt = open_cache(folder, cfg, model, views=2, encoder_mode="eval")
    assert "segment.bin has 10 bytes" in caplog.text and "Rebuilding the feature cache" in caplog.text
    assert np.array_equal(np.array(rebuilt.feat), good) and cache_problems(folder, fp) == []
    (folder/"meta.json").write_text("{not json")
    assert "meta.json is unreadable" in cache_problems(folder, fp)[0]


def test_foreign_cache_is_refused_or_rebuilt(setup, tmp_path):
    "A cache of other encoder weights or another train config is detected, field by field"
    root, weight, model = setup
    cfg = tiny_cfg(root, tmp_path/"exp", weight)
    folder = tmp_path/"cache"
    build_cache(folder, cfg, model, views=2, encoder_mode="eval")
    other = build_model(cfg.model); other.load_state_dict(model.state_dict())
    with torch.no_grad(): other.backbone.embedding.stem.linear.weight[0, 0] += 1e-4
    with pytest.raises(CacheMismatch, match=r"meta.json: field 'weights' was"):
        open_cache(folder, cfg, other, views=2, encoder_mode="eval", on_mismatch="error")
    cfg2 = tiny_cfg(root, tmp_path/"exp", weight, **{"data.train.transform.13.point_max": 400})
    with pytest.raises(CacheMismatch, match=r"field 'data' was"):
        open_cache(folder, cfg2, model, views=2, encoder_mode="eval", on_mismatch="error")
    with pytest.raises(CacheMismatch, match=r"field 'views' was 2, this run has 3"):
        open_cache(folder, cfg, model, views=3, encoder_mode="eval", on_mismatch="error")
    with pytest.raises(CacheMismatch, match=r"field 'seed' was 0, this run has 1"):
        open_cache(folder, tiny_cfg(root, tmp_path/"exp", weight, seed=1), model, views=2, encoder_mode="eval", on_mismatch="error")
    rebuilt = open_cache(folder, cfg2, model, views=2, encoder_mode="eval")
    data2 = build_dataset(dict(to_plain(cfg2.data.train), loop=1))
    assert rebuilt.meta["fingerprint"] == cache_fingerprint(cfg2, model, data2, 2, "eval")
    assert max(e - s for s, e in rebuilt.rows.values()) <= 400


def test_non_lin_config_is_refused(setup, tmp_path):
    root, weight, _ = setup
    cfg = tiny_cfg(root, tmp_path/"exp", weight, **{"model.freeze_backbone": False})
    with pytest.raises(ValueError, match="freeze_backbone=True"):
        LinCacheTrainer(cfg)


def test_command_line(setup, tmp_path):
    "python -m sonata_nb.lincache trains a probe and reuses its cache on a second run"
    root, weight, _ = setup
    opts = [f"save_path={tmp_path/'exp'}", f"weight={weight}", "seed=0", "num_worker=0", "batch_size=2", "epoch=2",
            "eval_epoch=2", "report=False", "data.train.transform.13.point_max=512", "model.backbone_out_channels=24",
            "model.backbone.enc_depths=(1,1)", "model.backbone.enc_channels=(8,16)", "model.backbone.enc_num_head=(1,2)",
            "model.backbone.enc_patch_size=(64,64)", "model.backbone.stride=(2,)"]
    opts += [f"data.{s}.{k}={v}" for s in ("train", "val", "test")
             for k, v in (("data_root", root), ("n_train", 2), ("n_val", 1), ("spacing", 0.15))]
    cmd = [sys.executable, "-m", "sonata_nb.lincache", "--config-file", str(LIN), "--views", "2", "--options", *opts]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path/"exp"/"model"/"model_last.pth").is_file() and FeatureCache(tmp_path/"exp"/"lincache").meta["views"] == 2
    log = (tmp_path/"exp"/"log"/"train.log").read_text()
    assert "Cached 4 views" in log
    r = subprocess.run(cmd + ["resume=False"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Using the feature cache" in (tmp_path/"exp"/"log"/"train.log").read_text()


def test_validation_encodes_and_loads_each_scene_once(setup, tmp_path):
    "Over several cycles the val scene is loaded and encoded once; the probe starts from the on-the-fly run's head"
    from sonata_nb.trainer import Trainer
    root, weight, _ = setup
    hooks = [dict(type="CheckpointLoader"), dict(type="SemSegEvaluator"), dict(type="CheckpointSaver")]  # no final test
    cfg = tiny_cfg(root, tmp_path/"exp", weight, epoch=3, eval_epoch=3, hooks=hooks)
    t = LinCacheTrainer(cfg, views=2, encoder_mode="eval")
    plain = Trainer(tiny_cfg(root, tmp_path/"plain", weight))
    assert torch.equal(t.model.seg_head.weight, plain.model.seg_head.weight)  # same seed, same initial head
    plain.lock.release()
    calls = []
    t.model.backbone.register_forward_hook(lambda *a: calls.append(1))
    t.train()
    recs = [json.loads(l) for l in (tmp_path/"exp"/"log"/"metrics.jsonl").read_text().splitlines()]
    assert len([r for r in recs if r["type"] == "val"]) == 3
    assert len(calls) == 1 and len(t.val_loader.kept) == 1  # one val scene: encoded once, loaded once
