"Checkpoint loading (sonata_nb.model): every flavour, every error, the hub path, offline behaviour, round trips."
import logging, os, time
from pathlib import Path

import pytest
import torch

from sonata_nb.checkpoint import UntrustedCheckpointError, resolve_source
from sonata_nb.model import SONATA_CONFIG, LoadReport, PointTransformerV3, load_encoder, load_weights, save_checkpoint, upcast

TINY = dict(in_channels=9, order=("z", "z-trans"), stride=(2, 2), enc_depths=(1, 1, 1), enc_channels=(8, 16, 16),
            enc_num_head=(2, 2, 2), enc_patch_size=(32, 32, 32), dec_depths=(1, 1), dec_channels=(8, 16),
            dec_num_head=(2, 2), dec_patch_size=(32, 32), shuffle_orders=False, enc_mode=True)
UNET = {**TINY, "enc_mode": False}


def cloud(n=800, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 3, generator=g) * 2
    gc = torch.div(c, 0.05, rounding_mode="floor").long()
    _, vox = torch.unique(gc, dim=0, return_inverse=True)
    pick = torch.full((int(vox.max()) + 1,), n).scatter_reduce(0, vox, torch.arange(n), "amin")
    return dict(coord=c[pick], grid_coord=gc[pick], offset=torch.tensor([len(pick)]),
                feat=torch.cat([c[pick], torch.rand(len(pick), 6, generator=g)], 1))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PointTransformerV3(**TINY).eval()


def features(m, data=None):
    with torch.no_grad(): return upcast(m.eval()(data or cloud()))


def same_weights(a, b, prefix=""):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith(prefix))


# --- flavours ---------------------------------------------------------------------------------------------------

def test_round_trip_in_the_released_format(model, tmp_path):
    path = save_checkpoint(model, tmp_path / "sub" / "tiny.pth")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # what the reference `sonata.load` does
    assert sorted(ckpt) == ["config", "state_dict"] and list(ckpt["state_dict"]) == list(model.state_dict())
    assert PointTransformerV3(**ckpt["config"]).config == model.config  # the reference builds PTv3(**config)
    loaded = load_encoder(path)
    assert not loaded.training and loaded.load_report.prefix == "" and not loaded.load_report.dropped
    assert torch.equal(features(loaded), features(model))
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_save_overwrites_atomically(model, tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"old")
    save_checkpoint(model, path)
    assert torch.load(path, weights_only=True)["config"] == model.config and not list(tmp_path.glob("*.tmp"))


def test_pointcept_pretraining_checkpoint_loads_the_student(model, tmp_path, caplog):
    sd = model.state_dict()
    ckpt = {"epoch": 200, "optimizer": {"state": {}, "param_groups": []},
            "state_dict": {**{f"module.teacher.backbone.{k}": v + 1 for k, v in sd.items()},
                           **{f"module.student.backbone.{k}": v for k, v in sd.items()},
                           "module.student.backbone.embedding.mask_token": torch.zeros(1, 8),
                           "module.teacher.backbone.embedding.mask_token": torch.zeros(1, 8),
                           "module.student.mask_head.weight": torch.zeros(4, 4), "module.teacher.mask_head.weight": torch.zeros(4, 4)}}
    torch.save(ckpt, tmp_path / "pretrain.pth")
    with caplog.at_level(logging.INFO, logger="sonata_nb"): m = load_encoder(tmp_path / "pretrain.pth", **TINY)
    assert same_weights(m, model)
    r = m.load_report
    assert r.prefix == "module.student.backbone." and len(r.loaded) == len(sd) and not r.missing and not r.unexpected
    assert "module.student.backbone.embedding.mask_token" in r.dropped and len(r.dropped) == len(sd) + 4
    dropped_lines = [rec.message for rec in caplog.records if "not loaded, as expected" in rec.message]
    assert len(dropped_lines) == 1 and "\n" not in dropped_lines[0]
    assert "module.teacher.backbone.*" in dropped_lines[0] and "mask_token" in dropped_lines[0]


def test_pointcept_checkpoint_without_config_assumes_the_sonata_config(model, tmp_path):
    torch.save({"state_dict": {f"module.student.backbone.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "p.pth")
    with pytest.raises(ValueError, match=r"enc.enc0.block0.cpe.0.weight: model \(48, 3, 3, 3, 48\) vs checkpoint \(8, 3, 3, 3, 8\)"):
        load_encoder(tmp_path / "p.pth")  # no config: SONATA_CONFIG (48 channels) is built and the shapes disagree


@pytest.mark.parametrize("prefix", ["backbone.", "module.backbone."])
def test_trainer_checkpoint_uses_its_run_config(model, tmp_path, prefix):
    sd = {f"{prefix}{k}": v for k, v in model.state_dict().items()}
    run_config = {"weight": None, "model": {"type": "DefaultSegmentorV2", "num_classes": 20, "backbone_out_channels": 40,
                                            "backbone": {"type": "PT-v3m2", **TINY}}}
    torch.save({"epoch": 5, "state_dict": {**sd, f"{prefix.replace('backbone.', '')}seg_head.weight": torch.zeros(20, 40),
                                           f"{prefix.replace('backbone.', '')}seg_head.bias": torch.zeros(20)},
                "optimizer": {}, "scheduler": {}, "scaler": None, "best_metric_value": 0.5, "config": run_config},
               tmp_path / "model_best.pth")
    m = load_encoder(tmp_path / "model_best.pth")
    assert m.config == PointTransformerV3(**TINY).config and same_weights(m, model)
    assert [k.split(".")[-2] for k in m.load_report.dropped] == ["seg_head", "seg_head"]
    target = PointTransformerV3(**TINY)
    report = load_weights(target, tmp_path / "model_best.pth")  # what the trainer does with `weight=`
    assert isinstance(report, LoadReport) and same_weights(target, model) and "loaded" in str(report)


def test_run_config_with_another_backbone_is_refused(model, tmp_path):
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()},
                "config": {"model": {"backbone": {"type": "SpUNet-v1m1"}}}}, tmp_path / "c.pth")
    with pytest.raises(ValueError, match="SpUNet-v1m1"): load_encoder(tmp_path / "c.pth")


def test_decoder_model_from_an_encoder_only_file_keeps_a_fresh_decoder(model, tmp_path, caplog):
    save_checkpoint(model, tmp_path / "enc.pth")
    torch.manual_seed(1)
    unet = PointTransformerV3(**UNET)
    dec_before = {k: v.clone() for k, v in unet.state_dict().items() if k.startswith("dec.")}
    with caplog.at_level(logging.INFO, logger="sonata_nb"): report = load_weights(unet, tmp_path / "enc.pth")
    assert sorted(report.new_decoder) == sorted(dec_before) and not report.missing
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in dec_before.items())
    assert same_weights(unet, model, prefix="enc.")
    assert any("fresh initialisation" in r.message for r in caplog.records)
    m = load_encoder(tmp_path / "enc.pth", enc_mode=False)  # override: a decoder probe from sonata.pth
    assert hasattr(m, "dec") and len(m.load_report.new_decoder) == len(dec_before)


def test_encoder_from_a_unet_file_drops_the_decoder(tmp_path):
    torch.manual_seed(2)
    unet = PointTransformerV3(**UNET)
    save_checkpoint(unet, tmp_path / "unet.pth")
    m = load_encoder(tmp_path / "unet.pth", enc_mode=True)
    assert not hasattr(m, "dec") and all(k.startswith("dec.") for k in m.load_report.dropped)
    full = load_encoder(tmp_path / "unet.pth")
    assert same_weights(full, unet) and not full.load_report.new_decoder


@pytest.mark.parametrize("prefix", ["backbone.", "module.backbone."])
def test_encoder_from_an_ft_checkpoint_is_the_encoder_not_the_decoder(tmp_path, caplog, prefix):
    "A trainer checkpoint of an ft run (U-Net backbone + head): the encoder part, unless enc_mode=False is asked for"
    torch.manual_seed(4)
    unet = PointTransformerV3(**UNET).eval()
    run_config = {"model": {"type": "DefaultSegmentorV2", "backbone_out_channels": 8, "backbone": {"type": "PT-v3m2", **UNET}}}
    torch.save({"epoch": 2, "config": run_config, "state_dict": {**{f"{prefix}{k}": v for k, v in unet.state_dict().items()},
                f"{prefix[:-len('backbone.')]}seg_head.weight": torch.zeros(20, 8)}}, tmp_path / "model_best.pth")
    with caplog.at_level(logging.INFO, logger="sonata_nb"): enc = load_encoder(tmp_path / "model_best.pth")
    assert enc.enc_mode and not hasattr(enc, "dec") and same_weights(enc, unet, prefix="enc.")
    assert features(enc).shape[1] == sum(TINY["enc_channels"])  # 40-d encoder features, not the decoder's 8
    assert sorted(k for k in enc.load_report.dropped if ".dec." in k) == sorted(f"{prefix}{k}" for k in unet.state_dict() if k.startswith("dec."))
    assert any("encoder only (enc_mode=True)" in r.message and "enc_mode=False" in r.message for r in caplog.records)
    full = load_encoder(tmp_path / "model_best.pth", enc_mode=False)
    assert hasattr(full, "dec") and same_weights(full, unet)
    with torch.no_grad(): assert torch.equal(full(cloud()).feat, unet(cloud()).feat) and full(cloud()).feat.shape[1] == 8


def test_load_weights_accepts_a_loaded_checkpoint_dict(model):
    target = PointTransformerV3(**TINY)
    report = load_weights(target, {"state_dict": model.state_dict()})
    assert same_weights(target, model) and report.source == "checkpoint dict"


def test_files_that_need_full_unpickling_load_only_when_trusted(model, tmp_path, caplog):
    torch.save({"state_dict": model.state_dict(), "extra": LoadReport("x", "")}, tmp_path / "pickled.pth")
    with pytest.raises(UntrustedCheckpointError, match="sonata_nb.model.LoadReport"): load_encoder(tmp_path / "pickled.pth", **TINY)
    with caplog.at_level(logging.WARNING, logger="sonata_nb"):
        m = load_encoder(tmp_path / "pickled.pth", trust=True, **TINY)
    assert same_weights(m, model) and any("trust=True" in r.message for r in caplog.records)


# --- errors ----------------------------------------------------------------------------------------------------

def test_missing_file_names_the_path(tmp_path, model):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"): load_encoder(tmp_path / "nowhere.pth")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"): load_weights(model, tmp_path / "nowhere.pth")
    with pytest.raises(IsADirectoryError, match="folder"): load_encoder(tmp_path)


def test_missing_backbone_key_is_an_error_listing_it(model, tmp_path):
    sd = dict(model.state_dict()); del sd["enc.enc1.block0.attn.proj.bias"]
    torch.save({"config": model.config, "state_dict": sd}, tmp_path / "m.pth")
    with pytest.raises(KeyError, match=r"missing in the checkpoint \(1\): \['enc.enc1.block0.attn.proj.bias'\]"):
        load_encoder(tmp_path / "m.pth")


def test_unexpected_backbone_key_is_an_error_listing_it(model, tmp_path):
    torch.save({"config": model.config, "state_dict": {**model.state_dict(), "enc.enc2.block7.norm1.0.weight": torch.ones(16)}},
               tmp_path / "u.pth")
    with pytest.raises(KeyError, match=r"unexpected in the checkpoint \(1\): \['enc.enc2.block7.norm1.0.weight'\]"):
        load_encoder(tmp_path / "u.pth")
    with pytest.raises(KeyError, match="enc.enc2.block1"): load_encoder(tmp_path / "u.pth", enc_depths=(1, 1, 2))


def test_strict_false_loads_what_matches_and_warns(model, tmp_path, caplog):
    torch.save({"config": model.config, "state_dict": {**model.state_dict(), "enc.extra": torch.ones(1)}}, tmp_path / "x.pth")
    with caplog.at_level(logging.WARNING, logger="sonata_nb"): m = load_encoder(tmp_path / "x.pth", strict=False)
    assert same_weights(m, model) and m.load_report.unexpected == ["enc.extra"]
    assert any("enc.extra" in r.message for r in caplog.records)


def test_shape_mismatch_lists_key_and_both_shapes(model, tmp_path):
    save_checkpoint(model, tmp_path / "s.pth")
    with pytest.raises(ValueError, match=r"embedding.stem.linear.weight: model \(8, 6\) vs checkpoint \(8, 9\)"):
        load_encoder(tmp_path / "s.pth", in_channels=6)


def test_unknown_override_and_foreign_files_are_refused(model, tmp_path):
    save_checkpoint(model, tmp_path / "s.pth")
    with pytest.raises(TypeError, match=r"Unknown PT-v3m2 config keys \['patch_size'\]"): load_encoder(tmp_path / "s.pth", patch_size=4)
    with pytest.raises(NotImplementedError, match="enable_rpe"): load_encoder(tmp_path / "s.pth", enable_rpe=True)
    torch.save({"state_dict": {"module.backbone.stem.conv.weight": torch.zeros(1)}}, tmp_path / "v3m1.pth")
    with pytest.raises(KeyError, match="no PT-v3m2 backbone"): load_encoder(tmp_path / "v3m1.pth")
    torch.save({"weights": torch.zeros(1), "meta": "x"}, tmp_path / "other.pth")
    with pytest.raises(KeyError, match="no 'state_dict' entry"): load_encoder(tmp_path / "other.pth")


# --- the hub ---------------------------------------------------------------------------------------------------

@pytest.fixture
def empty_hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "hf"


def test_offline_hub_miss_fails_fast_with_the_cache_path_and_the_fix(empty_hf_home):
    t = time.time()
    with pytest.raises(FileNotFoundError) as e: load_encoder("facebook/sonata")
    assert time.time() - t < 5
    msg = str(e.value)
    assert str(empty_hf_home / "hub" / "models--facebook--sonata" / "snapshots") in msg
    assert "HF_HUB_OFFLINE" in msg and "hf download facebook/sonata sonata.pth" in msg and "load_encoder('/path/to" in msg


def test_hub_name_resolves_through_a_seeded_cache(empty_hf_home, model):
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo = empty_hf_home / "hub" / "models--facebook--sonata"
    save_checkpoint(model, repo / "snapshots" / rev / "sonata.pth")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    assert resolve_source("sonata") == repo / "snapshots" / rev / "sonata.pth"
    m = load_encoder("facebook/sonata")
    assert torch.equal(features(m), features(model))
    assert m.load_report.source.endswith("sonata.pth")


def test_a_local_file_wins_over_the_hub_name(model, tmp_path, monkeypatch, empty_hf_home):
    monkeypatch.chdir(tmp_path)
    save_checkpoint(model, tmp_path / "sonata")
    assert resolve_source("sonata") == Path("sonata")
