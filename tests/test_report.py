"The experiment report and the prediction export, on a real tiny demo run (2 train/eval cycles on 2 generated rooms, CPU)."
import re, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

from sonata_nb.runtime import default_device

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--hide-scrollbars", "--proxy-server=127.0.0.1:9"]  # 127.0.0.1:9: no network


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    "A finished demo ft run: config, log, metrics.jsonl, model, result/ (the tester's predictions)"
    from sonata_nb.demo import make_demo_data
    from sonata_nb.recipes import train_main
    tmp = tmp_path_factory.mktemp("report")
    data = make_demo_data(tmp/"data", n_train=2, n_val=1, seed=0, spacing=0.15)
    opts = dict(save_path=tmp/"exp"/"demo"/"ft", seed=0, num_worker=0, batch_size=2, epoch=2, eval_epoch=2,
                enable_wandb=False, log_interval=1, **{"data.train.transform.SphereCrop.point_max": 512, "test.num_workers": 0})
    for split in ("train", "val", "test"):
        opts.update({f"data.{split}.data_root": data, f"data.{split}.n_train": 2, f"data.{split}.n_val": 1,
                     f"data.{split}.spacing": 0.15})
    train_main(["--config-file", str(ROOT/"configs"/"demo"/"semseg-demo-ft.py"), "--options", *[f"{k}={v}" for k, v in opts.items()]])
    return tmp/"exp"/"demo"/"ft"


@pytest.fixture(scope="module")
def report(exp):
    from sonata_nb.report import write_report
    return write_report(exp, views=1)


def test_report_content(exp, report):
    "Summary from the config and logs, curves, per-class table with point counts, confusion matrix, one plotly.js"
    from sonata_nb.viz import scene_prediction
    text = report.read_text()
    assert report == exp/"report.html" and not list(exp.glob(".*.tmp"))
    assert text.count("plotly.js v") == 1 and "<script src" not in text
    for s in ("protocol</td><td>ft", "1,022,532 trainable of 1,022,532", f"1 process(es) on {default_device().type}", "best val mIoU",
              "test mIoU / mAcc / allAcc", 'id="curves"', 'id="iou"', 'id="confusion"', 'id="view-0"', "Nothing missing"):
        assert s in text, s
    s = scene_prediction(exp, "demo_val_000")
    walls = int(((s["segment"] == 0)).sum())
    assert f"<tr><td>wall</td><td>" in text and f"{walls:,}" in text  # ground-truth points of the class
    assert f"{min(30_000, len(s['coord'])):,} of {len(s['coord']):,} points per panel" in text
    # the PCA view: the checkpoint's encoder (the ft U-Net's encoder part: 96 + 64 + 48 channels), with its point budget
    assert 'id="pca"' in text and "Encoder features (PCA)" in text and "model/model_best.pth" in text
    assert "208-d features" in text and f"({min(30_000, len(s['coord'])):,} of {len(s['coord']):,}, seeded subsample, seed 0)" in text


def test_report_pca_view_is_the_encoders(exp, report):
    "The report's PCA view: the demo PCA of the checkpoint encoder's features on every point, grouped by class"
    from sonata_nb.explore import SceneSource, show
    from sonata_nb.model import load_encoder
    from sonata_nb.report import write_report
    from sonata_nb.viz import pca_colors
    from sonata_nb.zero_shot import encode
    src = SceneSource(exp)
    s = src.scene("demo_val_000")
    enc = load_encoder(exp/"model"/"model_best.pth")
    assert enc.enc_mode  # an ft checkpoint: its encoder, not the decoder
    f = encode(s, enc, levels=2)
    want = np.round(pca_colors(f["feat"]) * 255).astype(int)[f["inverse"]]
    fig = show(exp, "demo_val_000", view="pca")
    assert [t.name for t in fig.data] == [("ignored" if c < 0 else src.names[c]) for c in np.unique(s["segment"])]
    for t, c in zip(fig.data, np.unique(s["segment"])):
        assert sorted(t.marker.color) == sorted(f"rgb({r},{g},{b})" for r, g, b in want[s["segment"] == c]), t.name
    assert "208-d" in fig.layout.title.text
    no_pca = write_report(exp, exp/"r_nopca.html", views=0, pca=False).read_text()
    assert 'id="pca"' not in no_pca and "Encoder features (PCA)" not in no_pca


def test_report_states_missing_pieces(exp, tmp_path):
    "No result/ and no validation: said in the report; no config or no log: an error naming the folder and the file"
    from sonata_nb.report import write_report
    bare = tmp_path/"bare"
    shutil.copytree(exp/"config", bare/"config")
    with pytest.raises(FileNotFoundError, match=r"bare' has no log"): write_report(bare)
    (bare/"log").mkdir()
    (bare/"log"/"metrics.jsonl").write_text('{"type": "train", "epoch": 1, "iter": 1, "step": 1, "loss": 2.0, "lr": 0.1}\n{"type": "tr')
    text = write_report(bare).read_text()
    for s in ("no validation records", "no result/*_pred.npy", "No evaluation yet", "line 2 is not JSON"):
        assert s in text, s
    with pytest.raises(FileNotFoundError, match=r"config/config.py is missing"): write_report(tmp_path)
    r = subprocess.run([sys.executable, "-m", "sonata_nb.report", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode != 0 and f"'{tmp_path}' is not an experiment folder" in r.stderr


def test_ply_export_round_trips(exp):
    "result/<scene>_pred.ply: the scene's points, the predicted labels and their palette colours (plyfile and open3d)"
    import plyfile, open3d as o3d
    from sonata_nb.classes import SCANNET20_PALETTE
    from sonata_nb.viz import export_predictions, scene_prediction
    files = export_predictions(exp)
    assert files == [exp/"result"/"demo_val_000_pred.ply"]
    s = scene_prediction(exp, "demo_val_000")
    v = plyfile.PlyData.read(str(files[0]))["vertex"]
    np.testing.assert_allclose(np.c_[v["x"], v["y"], v["z"]], s["coord"], atol=1e-6)
    np.testing.assert_array_equal(v["label"], s["pred"])
    np.testing.assert_array_equal(np.c_[v["red"], v["green"], v["blue"]], SCANNET20_PALETTE[s["pred"]])
    pc = o3d.io.read_point_cloud(str(files[0]))
    np.testing.assert_allclose(np.asarray(pc.colors), SCANNET20_PALETTE[s["pred"]] / 255, atol=1e-6)


def legends(dom: str) -> dict[str, list[str]]:
    "Entries of every plotly legend in a dumped DOM, by legend id (legend, legend2, ...), in page order"
    out = {}
    for key, name in re.findall(r'class="(legend\d*)text"[^>]*>([^<]*)<', dom): out.setdefault(key, []).append(name)
    return out


def render(page: Path, tmp: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp}/profile", "--virtual-time-budget=5000", *args,
                           page.as_uri()], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_report_renders_offline(exp, report, tmp_path):
    "Headless Chromium, network off: the 3D panels draw their points and each legend names the classes present"
    from PIL import Image
    from sonata_nb.classes import SCANNET20_NAMES, SCANNET20_PALETTE
    from sonata_nb.viz import ERROR_PALETTE, scene_prediction, subsample
    s = scene_prediction(exp, "demo_val_000")
    idx = subsample(len(s["coord"]), 30_000)
    seg, pred = s["segment"][idx], s["pred"][idx]
    shot = tmp_path/"report.png"
    dom = render(report, tmp_path, "--window-size=1400,4000", f"--screenshot={shot}", "--dump-dom").stdout
    curves = ["train loss", "lr", "val loss", "val mIoU", "val mAcc", "val allAcc"]  # the first figure's legend
    gt, pr, err = legends(dom)["legend"], legends(dom)["legend2"], legends(dom)["legend3"]
    truth = [("ignored" if c < 0 else SCANNET20_NAMES[c]) for c in np.unique(seg)]
    assert gt == curves + truth + truth  # the curves, the ground-truth panel, then the PCA view (grouped by class)
    assert pr == [SCANNET20_NAMES[c] for c in np.unique(pred)]
    assert err == ["ignored", "correct", "wrong"][(0 if (seg < 0).any() else 1):]
    im = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    near = lambda rgb: (np.abs(im - np.asarray(rgb, int)).max(-1) <= 6)
    wrong = near(ERROR_PALETTE[1])
    rows = np.flatnonzero(wrong.sum(1) > 0)
    assert len(rows), "the errors panel drew no wrong points"
    rows = rows[: (np.flatnonzero(np.diff(rows) > 200).tolist() + [len(rows) - 1])[0] + 1]  # the first figure with red: the 3D views
    band = slice(max(rows.min() - 300, 0), rows.max() + 300)  # the row of the three panels
    third = im.shape[1] // 3
    wall, floor_ = near(SCANNET20_PALETTE[0])[band], near(SCANNET20_PALETTE[1])[band]
    for panel in range(2):  # ground truth, prediction: wall and floor points
        cols = slice(panel * third, (panel + 1) * third)
        assert wall[:, cols].sum() > 50 and floor_[:, cols].sum() > 50, (panel, wall[:, cols].sum(), floor_[:, cols].sum())
    assert wrong[band, 2 * third:].sum() > 50 and wrong[band, :2 * third].sum() == 0
    # the PCA view below the 3D views draws its points in their PCA colours
    from sonata_nb.explore import show
    pca = show(exp, "demo_val_000", view="pca")
    colours = {tuple(int(v) for v in c[4:-1].split(",")) for t in pca.data for c in t.marker.color}
    below = im[band.stop:].reshape(-1, 3)
    drawn = sum(1 for p in map(tuple, below[::3]) if p in colours)
    assert drawn > 100, drawn
