"show() and the Explorer (sonata_nb.explore) on a small experiment folder: views, scene switching, class toggles, without a browser."
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sonata_nb.explore import Explorer, SceneSource, ViewUnavailable, scene_view, show
from sonata_nb.viz import pca_colors
from sonata_nb.zero_shot import encode, similarity, similarity_colors

TINY = dict(in_channels=9, enc_depths=(1, 1, 1), enc_channels=(16, 32, 48), enc_num_head=(1, 2, 3),
            enc_patch_size=(64,) * 3, stride=(2, 2), enc_mode=True, shuffle_orders=False)
NAMES = ["wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
         "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub", "otherfurniture"]


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    "An experiment folder as the trainer and tester leave it (config, result/<scene>_pred.npy for one of two scenes)"
    from sonata_nb.demo import make_demo_data
    tmp = tmp_path_factory.mktemp("explore")
    data = make_demo_data(tmp/"data", n_train=1, n_val=2, seed=0, spacing=0.15)
    exp = tmp/"exp"
    (exp/"config").mkdir(parents=True); (exp/"result").mkdir()
    (exp/"config"/"config.py").write_text(f"data = dict(num_classes=20, names={NAMES!r}, test=dict(type='DemoDataset', "
                                          f"split='val', data_root={str(data)!r}, n_train=1, n_val=2, spacing=0.15))\n")
    seg = SceneSource(exp).scene(0)["segment"]
    pred = np.where(seg < 0, 0, seg); pred[::7] = (pred[::7] + 3) % 20  # a tester predicts a class for every point
    np.save(exp/"result"/"demo_val_000_pred.npy", pred)
    return exp


@pytest.fixture(scope="module")
def src(exp):
    torch.manual_seed(0)
    from sonata_nb.model import PointTransformerV3
    return SceneSource(exp, encoder=PointTransformerV3(**TINY).eval())


def colours(fig_data, n):
    "Per-point 'rgb(...)' strings of a figure's class traces, in scan order (the subsample is all points here)"
    out = np.empty(n, object)
    for t, rows in fig_data:
        if t.name.startswith("point "): continue  # the similarity query's marker
        out[rows] = t.marker.color if isinstance(t.marker.color, (tuple, list)) else [t.marker.color] * len(rows)
    return out


def rgb(a): return np.array([f"rgb({r},{g},{b})" for r, g, b in a], object)


def test_views_colour_the_points_as_their_definitions(src):
    "truth/prediction: class colours; errors: red where wrong; pca: the demo PCA per point; similarity: the demo heat"
    s = src.scene(0)
    n = len(s["coord"])
    def view(v, **kw):
        traces, index, title = scene_view(src, 0, v, **kw)
        return colours(zip(traces, index), n), traces, title
    truth, traces, _ = view("truth")
    assert [t.name for t in traces] == [("ignored" if c < 0 else NAMES[c]) for c in np.unique(s["segment"])]
    lab = s["segment"] >= 0
    assert (truth[lab] == rgb(src.palette[s["segment"][lab]])).all()
    pred, _, _ = view("prediction")
    assert (pred == rgb(src.palette[s["pred"]])).all()
    err, _, title = view("errors")
    wrong = (s["pred"] != s["segment"]) & lab
    assert ((err == "rgb(220,30,30)") == wrong).all() and f"{wrong.sum():,} of {lab.sum():,}" in title
    f = encode(s, src.encoder, levels=2)
    pca, _, _ = view("pca")
    assert (pca == rgb(np.round(pca_colors(f["feat"]) * 255).astype(int)[f["inverse"]])).all()
    sim, traces, _ = view("similarity", query=42)
    want = np.round(similarity_colors(similarity(f["feat"], int(f["inverse"][42]))) * 255).astype(int)[f["inverse"]]
    assert (sim == rgb(want)).all() and traces[-1].name == "point 42"
    assert (view("color")[0] == rgb(s["color"].astype(np.uint8))).all()


def test_show_picks_a_view_and_states_what_is_missing(exp, src):
    fig = show(exp)
    assert [a.text for a in fig.layout.annotations][:2] == ["ground truth", "prediction"]  # tested + labelled: three panels
    assert show(exp, "demo_val_001").layout.title.text.split(" · ")[1] == "ground truth"
    with pytest.raises(ViewUnavailable, match="run the tester"): show(exp, 1, view="prediction")
    with pytest.raises(ViewUnavailable, match="pass encoder="): show(exp, 0, view="pca")  # no model/ in this folder
    with pytest.raises(KeyError, match="No scene 'nope'"): show(exp, "nope")
    with pytest.raises(FileNotFoundError, match="config/config.py is missing"): show(exp/"result")
    with pytest.raises(ValueError, match="Unknown view 'depth'"): show(src, 0, view="depth")
    assert len(show(src, 0, max_points=100).data[0].x) <= 100 and "100 of" in show(src, 0, view="truth", max_points=100).layout.title.text


def test_explorer_widgets_drive_the_figure(src):
    "Scene switched: traces replaced; class toggled: trace hidden (in every view); view switched: colours change; click: query"
    ex = Explorer(src)
    assert ex.view.value == "prediction" and len(ex.fig.data) > 1
    first = [np.asarray(t.x).copy() for t in ex.fig.data]
    ex.view.value = "truth"
    ex.scene.value = "demo_val_001"
    s1 = src.scene(1)
    assert sum(len(t.x) for t in ex.fig.data) == len(s1["coord"])
    assert sorted(np.concatenate([np.asarray(t.x) for t in ex.fig.data])) == sorted(s1["coord"][:, 0].astype(np.float32))
    assert not any(len(a) == len(t.x) and np.array_equal(a, t.x) for a, t in zip(first, ex.fig.data))
    ex.classes["wall"].value = False
    assert [t.visible for t in ex.fig.data if t.name == "wall"] == [False]
    assert all(t.visible is not False for t in ex.fig.data if t.name != "wall")
    before = {t.name: t.marker.color for t in ex.fig.data}
    ex.view.value = "pca"
    after = {t.name: t.marker.color for t in ex.fig.data}
    assert before.keys() == after.keys() and all(isinstance(before[k], str) and isinstance(after[k], tuple) for k in after)
    assert [t.visible for t in ex.fig.data if t.name == "wall"] == [False]  # still hidden after the view switch
    ex.view.value = "prediction"  # this scene has no prediction: said, nothing drawn
    assert len(ex.fig.data) == 0 and "run the tester" in ex.status.value
    ex.view.value = "similarity"
    floor = next(i for i, t in enumerate(ex.fig.data) if t.name == "floor")
    ex._clicked(ex.fig.data[floor], SimpleNamespace(point_inds=[3]), None)  # what plotly sends on a click
    q = int(ex._index[floor][3])
    assert ex.query.value == q and ex.fig.data[-1].name == f"point {q}"
    ex.size.value = 6
    assert {t.marker.size for t in ex.fig.data if not t.name.startswith("point ")} == {6}


def test_a_dataset_config_is_a_source(exp):
    from sonata_nb.viz import experiment_config
    cfg = experiment_config(exp)["data"]["test"]
    fig = show(dict(cfg), "demo_val_000")
    assert fig.layout.title.text.split(" · ")[1] == "ground truth" and "wall" in [t.name for t in fig.data]
    with pytest.raises(TypeError, match="experiment folder, a dataset or a dataset config"): show(42)
