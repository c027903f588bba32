"Mechanism tests of the precise evaluation (sonata_nb.tester) on tiny synthetic scenes, CPU only."
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sonata_nb.classes import S3DIS_NAMES, VALID_CLASS_IDS_20
from sonata_nb.config import Config
from sonata_nb.datasets import S3DIS_AREAS, build_dataset
from sonata_nb.model import MODELS
from sonata_nb.tester import (SemSegTester, derive_save_path, load_test_weight, s3dis_6fold_table, vote_fragments)
from sonata_nb.recipes import test_main as sonata_test  # aliased: pytest would collect `test_main`

K = 20


@MODELS.register_module("TesterTestPointwise", force=True)
class Pointwise(torch.nn.Module):
    "A segmentor whose logits depend on each point's own features only, so the vote can be computed by hand"
    def __init__(self, in_channels=6, num_classes=K):
        super().__init__()
        self.seg_head = torch.nn.Linear(in_channels, num_classes)

    def forward(self, data):
        return dict(seg_logits=self.seg_head(data["feat"]))


def write_scene(folder, n, seed, segment_name="segment20", dup_every=3):
    "A random scene; every `dup_every`-th point repeats its predecessor's position (2 points in a voxel)"
    rng = np.random.default_rng(seed)
    coord = rng.uniform(0, 2, (n, 3)).astype(np.float32)
    coord[dup_every::dup_every] = coord[dup_every - 1:-1:dup_every] + 0.001
    folder.mkdir(parents=True)
    np.save(folder/"coord.npy", coord)
    np.save(folder/"color.npy", rng.integers(0, 256, (n, 3)).astype(np.uint8))
    normal = rng.normal(size=(n, 3)).astype(np.float32)
    np.save(folder/"normal.npy", normal / np.linalg.norm(normal, axis=1, keepdims=True))
    np.save(folder/segment_name, rng.integers(-1, K, n).astype(np.int64))


def identity_view():
    return [[dict(type="RandomRotateTargetAngle", angle=[0], axis="z", center=[0, 0, 0], p=1)]]


def four_views():
    return [[dict(type="RandomRotateTargetAngle", angle=[a], axis="z", center=[0, 0, 0], p=1)] for a in (0, 0.5, 1, 1.5)]


def make_cfg(tmp_path, dataset="ScanNetDataset", views=None, feat_keys=("color", "normal"), pre_sample=False,
             model=None, num_classes=K, split="val", data_root=None, **test):
    transform = [dict(type="CenterShift", apply_z=True), dict(type="NormalizeColor")]
    if pre_sample:
        transform += [dict(type="Copy", keys_dict={"segment": "origin_segment"}),
                      dict(type="GridSample", grid_size=0.01, hash_type="fnv", mode="train", return_inverse=True)]
    return Config(dict(
        save_path=str(tmp_path/"exp"), weight=None,
        model=model or dict(type="TesterTestPointwise", in_channels=3 * len(feat_keys), num_classes=num_classes),
        data=dict(num_classes=num_classes, ignore_index=-1, names=[f"c{k}" for k in range(num_classes)],
                  test=dict(type=dataset, split=split, data_root=str(data_root or tmp_path/"data"), test_mode=True,
                            transform=transform,
                            test_cfg=dict(voxelize=dict(type="GridSample", grid_size=0.02, hash_type="fnv", mode="test",
                                                        return_grid_coord=True),
                                          crop=None,
                                          post_transform=[dict(type="CenterShift", apply_z=False), dict(type="ToTensor"),
                                                          dict(type="Collect", keys=("coord", "grid_coord", "index"),
                                                               feat_keys=feat_keys)],
                                          aug_transform=views or identity_view()))),
        test=dict(type="SemSegTester", num_workers=0, **test)))


@pytest.fixture
def scannet(tmp_path):
    for i, n in enumerate((300, 200, 250)): write_scene(tmp_path/"data"/"val"/f"scene000{i}_00", n, seed=i)
    return tmp_path


def run_tester(cfg, model, **kw):
    return SemSegTester(cfg, model=model.eval(), num_workers=0, **kw)


def direct_pred(model, root, name):
    "argmax of the pointwise model on the raw colour/normal features of a scene"
    color = np.load(root/"color.npy").astype(np.float32) / 255
    feat = torch.from_numpy(np.concatenate([color, np.load(root/"normal.npy")], 1))
    device = next(model.parameters()).device  # the tester moved the model to its device (a GPU when there is one)
    with torch.no_grad(): return model(dict(feat=feat.to(device)))["seg_logits"].argmax(1).cpu().numpy()


def test_fragments_and_views_cover_every_point(scannet):
    cfg = make_cfg(scannet, views=four_views())
    data = build_dataset(cfg.data.test)[0]
    n = len(data["segment"])
    # 2 points share a voxel every third point, so each view has 2 fragments
    assert len(data["fragment_list"]) == 4 * 2
    torch.manual_seed(0)
    votes = vote_fragments(Pointwise().eval(), data["fragment_list"], n, K)
    counts = votes.sum(1)  # each appearance of a point adds a probability vector summing to 1
    assert bool((counts >= 4 - 1e-4).all()), "a point is missing from some view"
    per_view = torch.zeros(n)
    for frag in data["fragment_list"][:2]: per_view[frag["index"].long()] += 1
    assert bool((per_view >= 1).all())
    torch.testing.assert_close(counts, 4 * per_view, rtol=0, atol=1e-4)


def test_vote_equals_direct_computation(scannet):
    torch.manual_seed(0)
    model = Pointwise().eval()
    cfg = make_cfg(scannet)
    data = build_dataset(cfg.data.test)[1]
    n = len(data["segment"])
    votes = vote_fragments(model, data["fragment_list"], n, K)
    root = scannet/"data"/"val"/"scene0001_00"
    color = np.load(root/"color.npy").astype(np.float32) / 255
    feat = torch.from_numpy(np.concatenate([color, np.load(root/"normal.npy")], 1))
    appear = torch.zeros(n)
    for frag in data["fragment_list"]: appear[frag["index"].long()] += 1
    with torch.no_grad(): expected = F.softmax(model(dict(feat=feat))["seg_logits"], -1) * appear[:, None]
    torch.testing.assert_close(votes, expected, rtol=1e-5, atol=1e-6)


def test_batched_fragments_equal_one_by_one(scannet):
    torch.manual_seed(1)
    model = Pointwise().eval()
    frags = build_dataset(make_cfg(scannet, views=four_views()).data.test)[0]["fragment_list"]
    n = max(int(f["index"].max()) for f in frags) + 1
    one = vote_fragments(model, frags, n, K, batch_size=1)
    for bs in (3, 8):
        torch.testing.assert_close(vote_fragments(model, frags, n, K, batch_size=bs), one, rtol=1e-5, atol=1e-5)


def test_predictions_metrics_and_submission(scannet):
    torch.manual_seed(2)
    model = Pointwise()
    cfg = make_cfg(scannet)
    metrics = run_tester(cfg, model).test()
    result = Path(cfg.save_path)/"result"
    total = dict(intersection=0, union=0, target=0)
    for i in range(3):
        name = f"scene000{i}_00"
        root = scannet/"data"/"val"/name
        pred = np.load(result/f"{name}_pred.npy")
        np.testing.assert_array_equal(pred, direct_pred(model, root, name))
        raw_ids = np.loadtxt(result/"submit"/f"{name}.txt", dtype=np.int64)
        np.testing.assert_array_equal(raw_ids, np.array(VALID_CLASS_IDS_20)[pred])
        seg = np.load(root/"segment20.npy")
        valid = seg != -1
        for k in range(K):
            p, t = (pred == k) & valid, seg == k
            total["intersection"] += np.eye(K)[k] * (p & t).sum()
            total["union"] += np.eye(K)[k] * (p | t).sum()
            total["target"] += np.eye(K)[k] * t.sum()
    np.testing.assert_allclose(metrics["intersection"], total["intersection"])
    np.testing.assert_allclose(metrics["union"], total["union"])
    iou = total["intersection"] / (total["union"] + 1e-10)
    assert metrics["mIoU"] == pytest.approx(iou.mean())
    assert metrics["allAcc"] == pytest.approx(total["intersection"].sum() / total["target"].sum())
    saved = json.loads((result/"metrics.json").read_text())
    assert saved["mIoU"] == pytest.approx(metrics["mIoU"]) and saved["num_scenes"] == 3
    log = (Path(cfg.save_path)/"log"/"test.log").read_text()
    assert "Val result: mIoU/mAcc/allAcc" in log and "Class_19 - c19 Result: iou/accuracy" in log
    assert "Test: scene0002_00 [3/3]-250 Batch" in log


def test_predictions_recomputed_unless_reuse_requested(scannet):
    torch.manual_seed(3)
    model = Pointwise()
    cfg = make_cfg(scannet)
    first = run_tester(cfg, model).test()
    pred_file = Path(cfg.save_path)/"result"/"scene0000_00_pred.npy"
    good = np.load(pred_file)
    np.save(pred_file, (good + 1) % K)  # a stale prediction, e.g. from another weight
    again = run_tester(cfg, model).test()
    np.testing.assert_array_equal(np.load(pred_file), good)
    assert again["mIoU"] == pytest.approx(first["mIoU"])
    np.save(pred_file, (good + 1) % K)
    reused = run_tester(cfg, model, reuse_predictions=True).test()
    np.testing.assert_array_equal(np.load(pred_file), (good + 1) % K)
    assert reused["intersection"][:].sum() != first["intersection"].sum()
    np.save(pred_file, good[:10])
    with pytest.raises(ValueError, match="scene0000_00_pred.npy' has 10 predictions"):
        run_tester(cfg, model, reuse_predictions=True).test()


def test_s3dis_presampling_maps_back_to_raw_points(tmp_path):
    rng = np.random.default_rng(0)
    for room, n in (("office_1", 400), ("hallway_2", 300)):
        folder = tmp_path/"data"/"Area_5"/room
        write_scene(folder, n, seed=n, segment_name="segment.npy", dup_every=2)
        coord = np.load(folder/"coord.npy")
        coord[1::2] = coord[0:-1:2] + 0.002  # pairs inside one 1 cm cell, with the same colour and normal
        np.save(folder/"coord.npy", coord)
        for key in ("color", "normal"):
            a = np.load(folder/f"{key}.npy"); a[1::2] = a[0:-1:2]; np.save(folder/f"{key}.npy", a)
        np.save(folder/"segment.npy", rng.integers(0, 13, (n, 1)).astype(np.int16))  # S3DIS stores (N, 1)
    torch.manual_seed(4)
    model = Pointwise(num_classes=13)
    cfg = make_cfg(tmp_path, dataset="S3DISDataset", split="Area_5", pre_sample=True, num_classes=13)
    sub = build_dataset(cfg.data.test)[0]
    assert len(sub["segment"]) < len(sub["origin_segment"]) == 300  # hallway_2 comes first (sorted)
    metrics = run_tester(cfg, model).test()
    result = Path(cfg.save_path)/"result"
    for room, n in (("office_1", 400), ("hallway_2", 300)):
        pred = np.load(result/f"Area_5-{room}_pred.npy")
        assert pred.shape == (n,)
        np.testing.assert_array_equal(pred, direct_pred(model, tmp_path/"data"/"Area_5"/room, room))
    record = torch.load(result/"Area_5.pth", weights_only=True)
    np.testing.assert_array_equal(record["target"].numpy(), metrics["target"])
    assert int(record["target"].sum()) == 700  # every raw point is evaluated
    assert not (result/"submit").exists()


def test_6fold_table_equals_hand_computation(tmp_path):
    rng = np.random.default_rng(5)
    total = {k: np.zeros(13, dtype=np.int64) for k in ("intersection", "union", "target")}
    for area in S3DIS_AREAS:
        t = rng.integers(0, 500, 13); i = rng.integers(0, t + 1); u = t + rng.integers(0, 300, 13)
        (tmp_path/area/"result").mkdir(parents=True)
        record = dict(intersection=i, union=u, target=t)  # Area_1 as Pointcept saves it (numpy), the rest as tensors
        if area != "Area_1": record = {k: torch.tensor(v) for k, v in record.items()}
        torch.save(record, tmp_path/area/"result"/f"{area}.pth")
        total["intersection"] += i; total["union"] += u; total["target"] += t
    table = s3dis_6fold_table(tmp_path)
    iou = total["intersection"] / (total["union"] + 1e-10)
    acc = total["intersection"] / (total["target"] + 1e-10)
    assert table["mIoU"] == pytest.approx(iou.mean())
    assert table["mAcc"] == pytest.approx(acc.mean())
    assert table["allAcc"] == pytest.approx(total["intersection"].sum() / total["target"].sum())
    saved = json.loads((tmp_path/"6-fold.json").read_text())
    assert saved["iou"][S3DIS_NAMES[3]] == pytest.approx(iou[3])
    log = (tmp_path/"6-fold.log").read_text()
    assert log.count("Val result") == 7 and "Parsing Area_6" in log
    torch.save({k: torch.tensor(v) for k, v in total.items()}, tmp_path/"Area_2.pth")
    with pytest.raises(ValueError, match="Two records for Area_2"): s3dis_6fold_table(tmp_path)
    (tmp_path/"Area_2.pth").unlink(); (tmp_path/"Area_4"/"result"/"Area_4.pth").unlink()
    with pytest.raises(FileNotFoundError, match="No record for Area_4"): s3dis_6fold_table(tmp_path)


def test_weight_errors(tmp_path):
    model = Pointwise()
    with pytest.raises(FileNotFoundError, match="No checkpoint found at '.*missing/model_best.pth'"):
        load_test_weight(model, tmp_path/"missing"/"model_best.pth")
    with pytest.raises(ValueError, match="No weight to test"): load_test_weight(model, None)
    ddp_style = dict(epoch=3, state_dict={f"module.{k}": v for k, v in Pointwise().state_dict().items()})
    torch.save(ddp_style, tmp_path/"ddp.pth")
    assert load_test_weight(model, tmp_path/"ddp.pth")["epoch"] == 3
    torch.testing.assert_close(model.seg_head.weight, ddp_style["state_dict"]["module.seg_head.weight"])
    torch.save(dict(state_dict={"backbone.x": torch.zeros(1)}), tmp_path/"encoder.pth")
    with pytest.raises(RuntimeError, match="encoder.pth' does not match the model"): load_test_weight(model, tmp_path/"encoder.pth")


def test_main_derives_save_path_from_weight(scannet, monkeypatch):
    torch.manual_seed(6)
    model = Pointwise()
    exp = scannet/"exp"/"demo"/"toy"
    (exp/"model").mkdir(parents=True)
    torch.save(dict(epoch=1, state_dict=model.state_dict()), exp/"model"/"model_best.pth")
    cfg = make_cfg(scannet)
    cfg.setdefault("epoch", 1); cfg.setdefault("eval_epoch", 1)
    cfg.dump(scannet/"config.py")
    monkeypatch.chdir(scannet)
    metrics = sonata_test(["--config-file", "config.py", "--options", "weight=exp/demo/toy/model/model_best.pth"])
    assert derive_save_path("exp/demo/toy/model/model_best.pth") == "exp/demo/toy"
    pred = np.load(exp/"result"/"scene0001_00_pred.npy")
    np.testing.assert_array_equal(pred, direct_pred(model.eval(), scannet/"data"/"val"/"scene0001_00", ""))
    assert json.loads((exp/"result"/"metrics.json").read_text())["mIoU"] == pytest.approx(metrics["mIoU"])
    assert (exp/"log"/"test.log").is_file()


def _ddp_worker(rank, world, port, cfg, state, out):
    import os
    from sonata_nb.launch import init_distributed
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      CUDA_VISIBLE_DEVICES="")  # gloo on the CPU, also on a machine with fewer GPUs than ranks
    init_distributed()
    try:
        model = Pointwise()
        model.load_state_dict(state)
        metrics = run_tester(Config(cfg), model).test()
        if rank == 0: torch.save({k: v for k, v in metrics.items()}, out)
        else: assert metrics is None
    finally: torch.distributed.destroy_process_group()


def test_ddp_ranks_share_scenes_and_gather_on_rank_0(scannet, monkeypatch):
    monkeypatch.setattr("sonata_nb.tester.default_device", lambda: torch.device("cpu"))  # the ranks run on the CPU too
    torch.manual_seed(7)
    model = Pointwise()
    cfg = make_cfg(scannet)
    single = run_tester(cfg, model).test()
    cfg.save_path = str(scannet/"exp_ddp")
    port = 29500 + os.getpid() % 1000
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, cfg.to_dict(), model.state_dict(), scannet/"ddp.pt"), nprocs=2)
    ddp = torch.load(scannet/"ddp.pt", weights_only=False)
    assert ddp["num_scenes"] == 3
    for key in ("intersection", "union", "target"): np.testing.assert_array_equal(ddp[key], single[key])
    assert ddp["mIoU"] == pytest.approx(single["mIoU"])
    for i in range(3):  # each scene predicted by one of the ranks, same as the single process
        name = f"scene000{i}_00_pred.npy"
        np.testing.assert_array_equal(np.load(scannet/"exp_ddp"/"result"/name), np.load(Path(cfg.save_path).parent/"exp"/"result"/name))


REPO = Path(__file__).resolve().parents[1]
TINY_SEGMENTOR = dict(
    type="DefaultSegmentorV2", num_classes=K, backbone_out_channels=16 + 32 + 64, freeze_backbone=False,
    backbone=dict(type="PT-v3m2", in_channels=9, order=("z", "z-trans"), stride=(2, 2), enc_depths=(1, 1, 1),
                  enc_channels=(16, 32, 64), enc_num_head=(2, 2, 4), enc_patch_size=(64, 64, 64), drop_path=0.0,
                  shuffle_orders=False, enc_mode=True),
    criteria=[dict(type="CrossEntropyLoss", loss_weight=1.0, ignore_index=-1)])


def lattice_scene(folder, seed, n_side=7):
    "Points on a 5 cm lattice with < 5 mm jitter: one point per 2 cm voxel, so grid sampling is deterministic"
    rng = np.random.default_rng(seed)
    ijk = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coord = (ijk * 0.05 + 0.0125 + rng.uniform(-0.004, 0.004, ijk.shape)).astype(np.float32)
    folder.mkdir(parents=True)
    np.save(folder/"coord.npy", coord)
    np.save(folder/"color.npy", rng.integers(0, 256, coord.shape).astype(np.uint8))
    normal = rng.normal(size=coord.shape).astype(np.float32)
    np.save(folder/"normal.npy", normal / np.linalg.norm(normal, axis=1, keepdims=True))
    np.save(folder/"segment20.npy", (ijk[:, 2] * 3 // n_side + 2 * (ijk[:, 0] > n_side // 2)).astype(np.int64))


def test_tools_test_reproduces_trainer_validation(tmp_path, monkeypatch):
    "tools/test.py on the trainer's model_best.pth, one identity view, deterministic sampling = the validation mIoU"
    for split, seeds in (("train", (0, 1)), ("val", (2, 3))):
        for s in seeds: lattice_scene(tmp_path/"data"/split/f"scene{s:04d}_00", s)
    collect = ("coord", "grid_coord", "segment")
    val_cfg = make_cfg(tmp_path, feat_keys=("coord", "color", "normal")).data.test
    val_cfg.test_cfg.aug_transform = identity_view()
    train = dict(type="ScanNetDataset", split="train", data_root=str(tmp_path/"data"), transform=[
        dict(type="CenterShift", apply_z=True),
        dict(type="GridSample", grid_size=0.02, hash_type="fnv", mode="train", return_grid_coord=True),
        dict(type="CenterShift", apply_z=False), dict(type="NormalizeColor"), dict(type="ToTensor"),
        dict(type="Collect", keys=collect, feat_keys=("coord", "color", "normal"))])
    val = dict(type="ScanNetDataset", split="val", data_root=str(tmp_path/"data"), transform=[
        dict(type="CenterShift", apply_z=True), dict(type="Copy", keys_dict={"segment": "origin_segment"}),
        dict(type="GridSample", grid_size=0.02, hash_type="fnv", mode="train", return_grid_coord=True, return_inverse=True),
        dict(type="CenterShift", apply_z=False), dict(type="NormalizeColor"), dict(type="ToTensor"),
        dict(type="Collect", keys=collect + ("origin_segment", "inverse"), feat_keys=("coord", "color", "normal"))])
    config = dict(
        batch_size=2, num_worker=0, epoch=3, eval_epoch=3, seed=0, save_path=str(tmp_path/"exp"/"demo"/"tiny"),
        model=TINY_SEGMENTOR, optimizer=dict(type="AdamW", lr=0.01, weight_decay=0.02),
        scheduler=dict(type="OneCycleLR", max_lr=0.01, pct_start=0.05, anneal_strategy="cos", div_factor=10.0,
                       final_div_factor=1000.0),
        data=dict(num_classes=K, ignore_index=-1, names=[f"c{k}" for k in range(K)], train=train, val=val,
                  test=val_cfg.to_dict()))
    (tmp_path/"cfg.py").write_text(f"_base_ = [{str(REPO/'configs'/'_base_'/'default_runtime.py')!r}]\n"
                                   + Config(config).dump())
    from sonata_nb.config import default_config_parser
    from sonata_nb.trainer import Trainer
    Trainer(default_config_parser(tmp_path/"cfg.py")).train()
    exp = tmp_path/"exp"/"demo"/"tiny"
    best = torch.load(exp/"model"/"model_best.pth", weights_only=False)
    after_training = json.loads((exp/"result"/"metrics.json").read_text())  # the trainer's precise evaluation
    monkeypatch.chdir(tmp_path)
    metrics = sonata_test(["--config-file", "exp/demo/tiny/config/config.py", "--options",
                           "weight=exp/demo/tiny/model/model_best.pth"])
    assert metrics["mIoU"] == pytest.approx(best["best_metric_value"], abs=1e-6)
    assert metrics["mIoU"] == pytest.approx(after_training["mIoU"], abs=1e-6)
    assert metrics["num_scenes"] == 2


def test_s3dis_6fold_runner_trains_each_fold_and_writes_table(tmp_path):
    for k, area in enumerate(S3DIS_AREAS):
        folder = tmp_path/"data"/area/"room_1"
        lattice_scene(folder, k, n_side=4)
        np.save(folder/"segment.npy", (np.load(folder/"segment20.npy") % 13).astype(np.int16).reshape(-1, 1))
        (folder/"segment20.npy").unlink()
    keys, feats = ("coord", "grid_coord", "segment"), ("coord", "color", "normal")
    sample = [dict(type="GridSample", grid_size=0.02, hash_type="fnv", mode="train", return_grid_coord=True)]
    tail = [dict(type="CenterShift", apply_z=False), dict(type="NormalizeColor"), dict(type="ToTensor")]
    test = make_cfg(tmp_path, dataset="S3DISDataset", split="Area_5", pre_sample=True, num_classes=13,
                    feat_keys=feats).data.test.to_dict()
    config = dict(
        batch_size=1, num_worker=0, epoch=1, eval_epoch=1, seed=0, model={**TINY_SEGMENTOR, "num_classes": 13},
        optimizer=dict(type="AdamW", lr=0.01, weight_decay=0.02),
        scheduler=dict(type="OneCycleLR", max_lr=0.01, pct_start=0.05, anneal_strategy="cos", div_factor=10.0,
                       final_div_factor=1000.0),
        data=dict(num_classes=13, ignore_index=-1, names=list(S3DIS_NAMES), test=test,
                  train=dict(type="S3DISDataset", split=["Area_1"], data_root=str(tmp_path/"data"), transform=[
                      dict(type="CenterShift", apply_z=True)] + sample + tail + [dict(type="Collect", keys=keys, feat_keys=feats)]),
                  val=dict(type="S3DISDataset", split="Area_5", data_root=str(tmp_path/"data"), transform=[
                      dict(type="CenterShift", apply_z=True), dict(type="Copy", keys_dict={"segment": "origin_segment"}),
                      {**sample[0], "return_inverse": True}] + tail + [
                      dict(type="Collect", keys=keys + ("origin_segment", "inverse"), feat_keys=feats)])))
    (tmp_path/"cfg.py").write_text(f"_base_ = [{str(REPO/'configs'/'_base_'/'default_runtime.py')!r}]\n" + Config(config).dump())
    from sonata_nb.recipes import run_s3dis_6fold
    exp_root = tmp_path/"exp"/"s3dis"/"tiny-6fold"
    assert run_s3dis_6fold(tmp_path/"cfg.py", exp_root, areas=("Area_2",)) is None  # one fold: no table yet
    saved = Config.fromfile(exp_root/"Area_2"/"config"/"config.py")
    assert saved.data.test.split == saved.data.val.split == "Area_2"
    assert saved.data.train.split == ["Area_1", "Area_3", "Area_4", "Area_5", "Area_6"]
    rng = np.random.default_rng(0)  # the other five folds' records, synthetic (each fold trains for seconds)
    for area in S3DIS_AREAS:
        if area == "Area_2": continue
        t = rng.integers(0, 50, 13); i = rng.integers(0, t + 1)
        (exp_root/area/"result").mkdir(parents=True)
        torch.save(dict(intersection=torch.tensor(i), union=torch.tensor(t + 3), target=torch.tensor(t)), exp_root/area/"result"/f"{area}.pth")
    table = run_s3dis_6fold(tmp_path/"cfg.py", exp_root, areas=())  # nothing left to train: the table
    records = [torch.load(exp_root/a/"result"/f"{a}.pth", weights_only=True) for a in S3DIS_AREAS]
    inter = sum(r["intersection"].numpy() for r in records); union = sum(r["union"].numpy() for r in records)
    assert table["mIoU"] == pytest.approx(np.mean(inter / (union + 1e-10)))
    assert int(records[1]["target"].sum()) == 4 ** 3  # every raw point of Area_2 tested once
    assert (exp_root/"6-fold.json").is_file()
