"DefaultSegmentorV2: up-cast features, head, frozen-backbone semantics, outputs per mode, Sonata parameter counts."
from functools import partial

import pytest
import torch
from sonata_nb.losses import build_criteria
from sonata_nb.model import MODELS, SONATA_CONFIG, PointTransformerV3
from sonata_nb.runtime import count_parameters
from sonata_nb.segmentor import DefaultSegmentorV2, build_model
from sonata_nb.testing import tiny_cloud

CRITERIA = [dict(type="CrossEntropyLoss", loss_weight=1.0, ignore_index=-1),
            dict(type="LovaszLoss", mode="multiclass", loss_weight=1.0, ignore_index=-1)]
TINY = dict(type="PT-v3m2", in_channels=9, order=("z", "z-trans"), stride=(2, 2), enc_depths=(1, 1, 1),
            enc_channels=(8, 16, 24), enc_num_head=(1, 2, 3), enc_patch_size=(32, 32, 32), dec_depths=(1, 1),
            dec_channels=(8, 16), dec_num_head=(1, 2), dec_patch_size=(32, 32), shuffle_orders=False)


cloud = partial(tiny_cloud, n=300, classes=4)  # sonata_nb.testing: random voxels with labels (-1 ignored)


def segmentor(mode, classes=4, **kw):
    backbone = {**TINY, "enc_mode": mode == "lin", "freeze_encoder": mode == "dec", **kw}
    return build_model(dict(type="DefaultSegmentorV2", num_classes=classes,
                            backbone_out_channels=8 + 16 + 24 if mode == "lin" else 8,
                            backbone=backbone, criteria=CRITERIA, freeze_backbone=mode == "lin"))


def test_registered_and_keys():
    assert "DefaultSegmentorV2" in MODELS and MODELS.get("DefaultSegmentorV2") is DefaultSegmentorV2
    m = segmentor("lin")
    keys = list(m.state_dict())
    assert keys[:2] == ["seg_head.weight", "seg_head.bias"]
    assert all(k.startswith(("seg_head.", "backbone.")) for k in keys)
    assert isinstance(m.backbone, PointTransformerV3)


def test_head_is_torch_default_linear_init():
    torch.manual_seed(3)
    m = segmentor("lin")
    torch.manual_seed(3)
    ref = torch.nn.Linear(48, 4)
    assert torch.equal(m.seg_head.weight, ref.weight) and torch.equal(m.seg_head.bias, ref.bias)


def test_lin_logits_are_head_of_manual_upcast():
    torch.manual_seed(0)
    m = segmentor("lin").eval()
    data = cloud()
    with torch.no_grad():
        out = m({k: v for k, v in data.items() if k != "segment"})
        torch.manual_seed(0)
        # the same forward by hand: backbone, then walk pooling_parent concatenating [parent, child[inverse]]
        point = m.backbone(dict(data))
        feat = point.feat
        while "pooling_parent" in point.keys():
            parent = point.pooling_parent
            feat = torch.cat([parent.feat, feat[point.pooling_inverse]], -1)
            point = parent
    assert feat.shape == (len(data["coord"]), 48)
    assert list(out) == ["seg_logits"]
    assert torch.allclose(out["seg_logits"], m.seg_head(feat), atol=1e-5)


def test_outputs_per_mode_and_loss_value():
    m = segmentor("dec")
    data = cloud()
    m.train()
    out = m(data)
    assert list(out) == ["loss"] and out["loss"].ndim == 0
    m.eval()
    with torch.no_grad():
        out = m(data)
    assert sorted(out) == ["loss", "seg_logits"] and out["seg_logits"].shape == (len(data["coord"]), 4)
    assert out["loss"].item() == pytest.approx(build_criteria(CRITERIA)(out["seg_logits"], data["segment"]).item(), abs=1e-5)


def test_lin_trains_only_head_and_backbone_stays_in_train_mode():
    m = segmentor("lin", drop_path=0.5).train()
    data = cloud()
    assert count_parameters(m) == 48 * 4 + 4
    assert all(mod.training for mod in m.backbone.modules())  # not put in eval mode
    m(data)["loss"].backward()
    assert {n for n, p in m.named_parameters() if p.grad is not None} == {"seg_head.weight", "seg_head.bias"}
    # DropPath active while probing: two train-mode forwards differ, eval forwards agree
    nolabel = {k: v for k, v in data.items() if k != "segment"}
    with torch.no_grad():
        m.train(); a, b = m.features(nolabel), m.features(nolabel)
        m.eval(); c, d = m.features(nolabel), m.features(nolabel)
    assert not torch.allclose(a, b) and torch.allclose(c, d)


def test_dec_freezes_encoder_only_and_ft_trains_all():
    dec, ft = segmentor("dec"), segmentor("ft")
    frozen = {n for n, p in dec.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("backbone.embedding.", "backbone.enc.")) for n in frozen)
    assert count_parameters(dec) == sum(p.numel() for p in dec.backbone.dec.parameters()) + 8 * 4 + 4
    assert count_parameters(ft) == sum(p.numel() for p in ft.parameters())


def test_wrong_out_channels_is_a_clear_error():
    m = build_model(dict(type="DefaultSegmentorV2", num_classes=4, backbone_out_channels=99,
                         backbone={**TINY, "enc_mode": True}, criteria=CRITERIA)).eval()
    with pytest.raises(ValueError, match="backbone_out_channels"):
        m(cloud())
    with pytest.raises(ValueError, match="backbone config"):
        DefaultSegmentorV2(4, 8)


def test_no_head_returns_features():
    m = build_model(dict(type="DefaultSegmentorV2", num_classes=0, backbone_out_channels=8, backbone=TINY)).eval()
    data = cloud()
    with torch.no_grad():
        out = m({k: v for k, v in data.items() if k != "segment"})
    assert out["seg_logits"].shape == (len(data["coord"]), 8)


SONATA_DEC = dict(dec_depths=(2, 2, 2, 2), dec_channels=(64, 96, 192, 384), dec_num_head=(4, 6, 12, 24),
                  dec_patch_size=(1024,) * 4)


@pytest.mark.parametrize("mode,classes,expected", [
    ("lin", 20, 24_660), ("dec", 20, 16_332_820), ("ft", 20, 124_794_148),
    ("lin", 200, 246_600), ("lin", 13, 16_029), ("dec", 13, 16_331_520 + 64 * 13 + 13),
])
def test_sonata_trainable_counts(mode, classes, expected):
    backbone = {**SONATA_CONFIG, "type": "PT-v3m2", "enc_mode": mode == "lin", "freeze_encoder": mode == "dec",
                **({} if mode == "lin" else SONATA_DEC)}
    with torch.device("meta"):
        m = build_model(dict(type="DefaultSegmentorV2", num_classes=classes,
                             backbone_out_channels=1232 if mode == "lin" else 64, backbone=backbone,
                             criteria=CRITERIA, freeze_backbone=mode == "lin"))
    assert count_parameters(m) == expected
    assert sum(p.numel() for p in m.backbone.embedding.parameters()) + sum(p.numel() for p in m.backbone.enc.parameters()) == 108_461_328
