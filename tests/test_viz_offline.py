"Figures that survive: offline HTML next to the plotly mimetype, an executed notebook's HTML drawn by headless Chromium, PNG export, widgets."
import json, re, shutil, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--hide-scrollbars", "--proxy-server=127.0.0.1:9"]  # 127.0.0.1:9: no network
PAL = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)


def room(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    coord = rng.uniform(0, 4, (n, 3))
    labels = (coord[:, 0] > 2).astype(np.int64)
    pred = labels.copy(); pred[: n // 10] = 1 - pred[: n // 10]
    return coord, labels, pred


def test_display_sends_offline_html_once():
    "display(fig) in a kernel sends text/html + the plotly mimetype; plotly.js is inlined in the first output only"
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    from IPython.display import display
    from sonata_nb.viz import cloud_figure, prediction_figure, reset_plotlyjs
    InteractiveShell.instance()
    coord, labels, pred = room()
    reset_plotlyjs()
    with capture_output() as cap:
        display(cloud_figure(coord, labels, ["wall", "floor"], PAL))
        display(prediction_figure(coord, pred, labels, ["wall", "floor"], PAL))
    data = [o.data for o in cap.outputs]
    assert [sorted(d) for d in data] == [["application/vnd.plotly.v1+json", "text/html"]] * 2
    assert ["plotly.js v" in d["text/html"] for d in data] == [True, False]
    assert [".camera']=cam" in d["text/html"] for d in data] == [False, True]  # linked cameras with several scenes


def test_viewer_widgets_drive_the_figure():
    "cloud_viewer without a front-end: a class toggled hides its trace, the slider sets the point size"
    from sonata_nb.viz import cloud_figure, cloud_viewer
    coord, labels, _ = room(200)
    ui = cloud_viewer(cloud_figure(coord, labels, ["wall", "floor"]))
    ui.boxes[1].value = False
    assert ui.fig.data[1].visible is False and ui.fig.data[0].visible is not False
    ui.size.value = 4
    assert [t.marker.size for t in ui.fig.data] == [4, 4]


def chromium(page: Path, tmp: Path, *args) -> str:
    r = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp}/profile", "--virtual-time-budget=5000", *args, "--dump-dom",
                        page.as_uri()], capture_output=True, text=True, timeout=120)
    return r.stdout


@needs_chromium
def test_executed_notebook_html_draws_figures(tmp_path):
    "jupyter nbconvert --execute --to html of a notebook with viz figures: drawn offline in Chromium, no widget state"
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in (
        "import numpy as np\nfrom sonata_nb.viz import cloud_figure, prediction_figure\n"
        f"rng = np.random.default_rng(0); coord = rng.uniform(0, 4, (2000, 3)); labels = (coord[:, 0] > 2).astype(int)\n"
        "pal = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)\ncloud_figure(coord, labels, ['wall', 'floor'], pal)",
        "pred = labels.copy(); pred[:200] = 1 - pred[:200]\nprediction_figure(coord, pred, labels, ['wall', 'floor'], pal)")]
    nbformat.write(nb, tmp_path/"views.ipynb")
    r = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--execute", str(tmp_path/"views.ipynb")],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    page = tmp_path/"views.html"
    text = page.read_text()
    assert text.count("* plotly.js v") == 1 and text.count("Plotly.newPlot(") == 2 and "widget-state" not in text
    shot = tmp_path/"shot.png"
    dom = chromium(page, tmp_path, "--window-size=1200,2400", f"--screenshot={shot}")
    names = re.findall(r'class="(legend\d*)text"[^>]*>([^<]*)<', dom)
    assert names == [("legend", "wall"), ("legend", "floor"), ("legend", "wall"), ("legend", "floor"),
                     ("legend2", "wall"), ("legend2", "floor"), ("legend3", "correct"), ("legend3", "wrong")]
    from PIL import Image
    im = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    blue = (im[..., 2] > 200) & (im[..., :2].max(-1) < 40)
    assert blue.sum() > 1000, "no points drawn"


@needs_chromium
def test_save_png(tmp_path):
    "A PNG of the 3D views without a desktop: the points in their class colours, at the asked size"
    from PIL import Image
    from sonata_nb.viz import prediction_figure, save_png
    coord, labels, pred = room()
    out = save_png(prediction_figure(coord, pred, labels, ["wall", "floor"], PAL), tmp_path/"views.png", width=900, height=400)
    im = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert im.shape == (400, 900, 3)
    red = (im[..., 0] > 200) & (im[..., 1:].max(-1) < 40)
    blue = (im[..., 2] > 200) & (im[..., :2].max(-1) < 40)
    assert red[:, :300].sum() > 200 and blue[:, :300].sum() > 200 and blue[:, 300:600].sum() > 200
