"The Sonata repository's demos as calls (sonata_nb.zero_shot): the hub names offline, and each demo's computation, line for line."
import hashlib, os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sonata_nb.checkpoint import resolve_source
from sonata_nb.demo import generate_room
from sonata_nb.model import PointTransformerV3, load_encoder, save_checkpoint
from sonata_nb.viz import pca_colors
from sonata_nb.zero_shot import (SegHead, as_scan, encode, load_head, segment, similarity, similarity_heat, sonata_transform,
                                 spectral_r)

TINY = dict(in_channels=9, enc_depths=(1, 1, 1, 1, 1), enc_channels=(8, 16, 16, 24, 32), enc_num_head=(1, 2, 2, 3, 4),
            enc_patch_size=(64,) * 5, stride=(2, 2, 2, 2), enc_mode=True, shuffle_orders=False)


@pytest.fixture(scope="module")
def room():
    return generate_room(5, spacing=0.08)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return PointTransformerV3(**{**TINY, **kw}).eval()


def demo_input(room, seed=0):
    "What the demos feed the model: sonata.transform.default() of the scene (seeded), `inverse` kept aside"
    data = sonata_transform(seed)({k: np.asarray(room[k], np.float32).copy() for k in ("coord", "color", "normal")})
    return data, data.pop("inverse").numpy()


def hub_cache(home: Path, files: dict) -> Path:
    "The Hugging Face cache after one download of each file: blobs by hash, snapshot symlinks, refs/main"
    repo, rev = home / "hub" / "models--facebook--sonata", "3f1b0c2d4e5f60718293a4b5c6d7e8f901234567"
    (repo / "blobs").mkdir(parents=True); (repo / "refs").mkdir(); (repo / "snapshots" / rev).mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    for name, obj in files.items():
        tmp = repo / "blobs" / "tmp"
        torch.save(obj, tmp)
        blob = repo / "blobs" / hashlib.sha256(tmp.read_bytes()).hexdigest()
        tmp.rename(blob)
        (repo / "snapshots" / rev / name).symlink_to(os.path.relpath(blob, repo / "snapshots" / rev))
    return repo / "snapshots" / rev


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no reference download folder
    return tmp_path / "hf"


def head_file(lin: nn.Linear) -> dict:
    "The released head format: config (backbone_out_channels, num_classes) and state_dict (seg_head.*)"
    return {"config": {"backbone_out_channels": lin.in_features, "num_classes": lin.out_features},
            "state_dict": {"seg_head.weight": lin.weight.detach().clone(), "seg_head.bias": lin.bias.detach().clone()}}


def test_hub_names_resolve_offline_from_the_cache_layout(offline_home, room):
    "sonata, sonata_small and sonata_linear_prob_head_sc: <name>.pth of facebook/sonata, read from the cache offline"
    big, small = tiny(0), tiny(1, enc_channels=(8, 8, 16, 24, 32))
    torch.manual_seed(2)
    lin = nn.Linear(sum(TINY["enc_channels"]), 20)
    with pytest.raises(FileNotFoundError, match="hf download facebook/sonata sonata_linear_prob_head_sc.pth"):
        load_head()
    snap = hub_cache(offline_home, {"sonata.pth": {"config": big.config, "state_dict": big.state_dict()},
                                    "sonata_small.pth": {"config": small.config, "state_dict": small.state_dict()},
                                    "sonata_linear_prob_head_sc.pth": head_file(lin)})
    for name in ("sonata", "sonata_small", "sonata_linear_prob_head_sc"): assert resolve_source(name) == snap / f"{name}.pth"
    assert resolve_source("facebook/sonata") == snap / "sonata.pth"
    assert load_encoder("sonata_small").config == small.config
    head = load_head()
    assert torch.equal(head.seg_head.weight, lin.weight) and head.source == str(snap / "sonata_linear_prob_head_sc.pth")
    out = segment(room)  # the defaults are the hub names
    data, inverse = demo_input(room)
    with torch.no_grad(): want = demo_sem_seg(big, lin, data)
    assert np.array_equal(out["grid_pred"], want) and np.array_equal(out["pred"], want[inverse])
    assert out["names"][:3] == ["wall", "floor", "cabinet"] and out["palette"].shape == (20, 3)


def demo_sem_seg(model, seg_head, point):
    "facebookresearch/sonata demo/2_sem_seg.py, its inference lines"
    point = model(point)
    while "pooling_parent" in point.keys():
        assert "pooling_inverse" in point.keys()
        parent = point.pop("pooling_parent")
        inverse = point.pop("pooling_inverse")
        parent.feat = torch.cat([parent.feat, point.feat[inverse]], dim=-1)
        point = parent
    feat = point.feat
    seg_logits = seg_head(feat)
    return seg_logits.argmax(dim=-1).data.cpu().numpy()


def demo_pca_feat(model, point):
    "facebookresearch/sonata demo/0_pca.py (and 1_similarity.py): the up-cast of the features"
    point = model(point)
    for _ in range(2):
        assert "pooling_parent" in point.keys()
        assert "pooling_inverse" in point.keys()
        parent = point.pop("pooling_parent")
        inverse = point.pop("pooling_inverse")
        parent.feat = torch.cat([parent.feat, point.feat[inverse]], dim=-1)
        point = parent
    while "pooling_parent" in point.keys():
        assert "pooling_inverse" in point.keys()
        parent = point.pop("pooling_parent")
        inverse = point.pop("pooling_inverse")
        parent.feat = point.feat[inverse]
        point = parent
    return point.feat


def get_pca_color(feat, brightness=1.25, center=True):  # demo/0_pca.py
    u, s, v = torch.pca_lowrank(feat, center=center, q=6, niter=5)
    projection = feat @ v
    projection = projection[:, :3] * 0.6 + projection[:, 3:6] * 0.4
    min_val = projection.min(dim=-2, keepdim=True)[0]
    max_val = projection.max(dim=-2, keepdim=True)[0]
    div = torch.clamp(max_val - min_val, min=1e-6)
    color = (projection - min_val) / div * brightness
    color = color.clamp(0.0, 1.0)
    return color


def test_segment_with_a_head_file_and_an_encoder_is_the_demo(room, tmp_path):
    model = tiny(3)
    torch.manual_seed(4)
    lin = nn.Linear(sum(TINY["enc_channels"]), 7)
    torch.save(head_file(lin), tmp_path / "head.pth")
    save_checkpoint(model, tmp_path / "enc.pth")
    out = segment(room, tmp_path / "head.pth", tmp_path / "enc.pth", seed=3)
    data, inverse = demo_input(room, seed=3)
    with torch.no_grad(): want = demo_sem_seg(model, lin, data)
    assert np.array_equal(out["pred"], want[inverse]) and out["names"] == [f"class {i}" for i in range(7)]
    with pytest.raises(ValueError, match="The head takes 8-d features but the encoder's up-cast features are 96-d"):
        segment(room, SegHead(8, 20), model)


def test_pca_colours_are_the_pca_demo(room):
    "encode(levels=2) is the demo's up-cast; pca_colors its get_pca_color under the same seed; inverse back to every point"
    model = tiny(5)
    f = encode(room, model, levels=2, seed=1)
    data, inverse = demo_input(room, seed=1)
    with torch.no_grad(): feat = demo_pca_feat(model, data)
    assert torch.equal(f["feat"], feat) and np.array_equal(f["inverse"], inverse)
    torch.manual_seed(11)
    want = get_pca_color(feat, brightness=1.2, center=True)
    assert np.array_equal(pca_colors(f["feat"], brightness=1.2, seed=11), want.numpy())
    assert len(np.unique(np.round(want.numpy(), 3), axis=0)) > 10  # a real colouring, not a constant


def test_similarity_heat_is_the_similarity_demo():
    "Cosine similarity of a local view's point to itself and to the scene, mapped by the demo's oral/highlight/reject"
    g = torch.Generator().manual_seed(0)
    local, scene = torch.randn(300, 16, generator=g), torch.randn(1000, 16, generator=g)
    select_index = [[17]]
    target, refer = F.normalize(local, p=2, dim=-1), F.normalize(scene, p=2, dim=-1)
    inner_self, inner_cross = target[select_index] @ target.t(), target[select_index] @ refer.t()
    oral, highlight, reject = 0.02, 0.1, 0.5
    sorted_inner = torch.sort(inner_cross, descending=True)[0]
    oral = sorted_inner[0, int(len(scene) * oral)]
    highlight = sorted_inner[0, int(len(scene) * highlight)]
    reject = sorted_inner[0, -int(len(scene) * reject)]
    for x in (inner_self, inner_cross):
        x -= highlight
        x[x > 0] = F.sigmoid(x[x > 0] / (oral - highlight))
        x[x < 0] = F.sigmoid(x[x < 0] / (highlight - reject)) * 0.9
    cross = similarity(local, 17, scene)
    np.testing.assert_allclose(cross, (target[17] @ refer.t()).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(similarity_heat(cross), inner_cross[0].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(similarity_heat(similarity(local, 17), refer_sim=cross), inner_self[0].numpy(), rtol=0, atol=1e-6)


def test_spectral_r_is_matplotlibs_table():
    "Spectral_r: ColorBrewer Spectral reversed, 256 entries, x*256 truncated (matplotlib's lookup)"
    c = spectral_r(np.array([0.0, 1.0, 0.5, 0.999]))
    np.testing.assert_allclose(c[0], np.array([94, 79, 162]) / 255)
    np.testing.assert_allclose(c[1], np.array([158, 1, 66]) / 255)
    np.testing.assert_allclose(c[3], c[1])
    np.testing.assert_allclose(c[2], np.array([255, 254.4, 190]) / 255, atol=2e-3)  # entry 128: 2 % of the way from the light middle


def test_head_file_errors_name_the_file_and_the_field(tmp_path):
    torch.save({"config": {"backbone_out_channels": 8}, "state_dict": {}}, tmp_path / "h1.pth")
    with pytest.raises(ValueError, match=r"h1.pth: config field\(s\) \['num_classes'\]"): load_head(tmp_path / "h1.pth")
    torch.save({"config": {"backbone_out_channels": 8, "num_classes": 3}, "state_dict": {"seg_head.weight": torch.zeros(3, 9)}},
               tmp_path / "h2.pth")
    with pytest.raises(KeyError, match=r"h2.pth: state_dict has .*expected"): load_head(tmp_path / "h2.pth")
    torch.save(torch.zeros(3), tmp_path / "h3.pth")
    with pytest.raises(KeyError, match="h3.pth is not a linear-probe head file"): load_head(tmp_path / "h3.pth")


def test_scans_from_files_and_folders(room, tmp_path):
    "A .ply without normals (estimated on reading), a Pointcept scene folder; a dict without normals says how to add them"
    from sonata_nb.viz import write_ply
    write_ply(tmp_path / "scan.ply", room["coord"], colors=room["color"])
    s = as_scan(tmp_path / "scan.ply")
    assert s["normal"].shape == room["coord"].shape and np.allclose(np.linalg.norm(s["normal"], axis=1), 1, atol=1e-4)
    (tmp_path / "scene").mkdir()
    for k in ("coord", "color", "normal", "segment20"): np.save(tmp_path / "scene" / f"{k}.npy", room[k])
    assert np.array_equal(as_scan(tmp_path / "scene")["segment20"], room["segment20"])
    with pytest.raises(KeyError, match=r"has no 'normal'.*estimate_normals"): as_scan({"coord": room["coord"], "color": room["color"]})
    with pytest.raises(ValueError, match="6 input channels"): encode(room, tiny(0, in_channels=6))
