"""The run notebooks in nbs/runs/ as papermill runs them (`sonata_nb.runs.execute_run`): the tagged parameters cell,
one real execution of each with its defaults (a smoke run on generated rooms, CPU) writing the executed notebook, its
offline HTML, report.html and metrics.json into the experiment folder; the S3DIS 6-fold protocol; bad parameters
failing with clear errors; and the executed HTML drawn by headless Chromium with the network off. The executions run
two at a time (threads of this process, each with its own kernel), started when the first test needs one."""
import json, math, os, re, shutil, subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import numpy as np
import pytest

pm = pytest.importorskip("papermill")
from papermill.exceptions import PapermillExecutionError

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO/"nbs"/"runs"
NUM_CLASSES = {"scannet": 20, "scannet200": 200, "s3dis": 13, "custom": 20}
PARAMS = ("protocol", "weight", "out_dir", "smoke", "options", "seed")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--hide-scrollbars", "--proxy-server=127.0.0.1:9"]  # 127.0.0.1:9: no network


def cdn_uses(page: str) -> list[str]:
    "What a page would fetch from the network: external scripts, remote stylesheets/images/frames, quoted CDN URLs in code"
    page = re.sub(r"<script[^>]*>\s*/\*\*\s*\* plotly\.js v.*?</script>", "", page, flags=re.S)  # the inlined bundle's own strings
    return re.findall(r"<script[^>]*\bsrc\s*=[^>]*>|<(?:link|img|iframe)[^>]*\b(?:href|src)\s*=\s*[\"']?(?:https?:)?//[^>]*>|"
                      r"[\"'`](?:https?:)?//[^\"'`\s]*(?:cdn|unpkg|jsdelivr|mathjax)[^\"'`\s]*[\"'`]", page, flags=re.I)


def execute(name, exp, **parameters):
    from sonata_nb.runs import execute_run
    return execute_run(RUNS/f"{name}.ipynb", exp, parameters)


# the executions each test needs: key -> (run notebook, experiment sub-folder, parameters)
EXECUTIONS = {**{name: (name, name, {}) for name in NUM_CLASSES},
              "6fold": ("s3dis", "s3dis-6fold", dict(test_area="6fold")),
              "bad protocol": ("scannet", "bad-protocol", dict(protocol="linear")),
              "no data root": ("scannet200", "no-data-root", dict(smoke=False, data_root="../../data/no-such-scannet"))}
NEEDS = {"test_default_run": lambda params: [params["name"]], "test_s3dis_6fold": lambda _: ["6fold"],
         "test_bad_protocol_names_the_choices": lambda _: ["bad protocol"],
         "test_missing_data_root_names_it": lambda _: ["no data root"],
         "test_executed_html_renders_offline": lambda _: ["scannet"]}


@pytest.fixture(scope="module")
def executions(request, tmp_path_factory):
    "key -> (experiment folder, its future: the executed notebook and html, or the error): every execution the "
    "selected tests need, started at once in test order, two at a time (each keeps one CPU core busy)"
    root, keys = tmp_path_factory.mktemp("runs"), []
    for item in request.session.items:
        if item.module is request.module and item.originalname in NEEDS:
            params = item.callspec.params if hasattr(item, "callspec") else {}
            keys += [k for k in NEEDS[item.originalname](params) if k not in keys]
    os.environ["HF_HUB_OFFLINE"] = "1"  # inherited by the kernels
    pool = ThreadPoolExecutor(2)
    futures = {}
    for k in keys:
        name, sub, params = EXECUTIONS[k]
        futures[k] = (root/sub, pool.submit(execute, name, root/sub, **params))
    yield futures
    pool.shutdown(cancel_futures=True)


@pytest.fixture(scope="module")
def executed(executions):
    "name -> (experiment folder, executed notebook, html): each run notebook executed once with its defaults"
    def get(name):
        exp, future = executions[name]
        return (exp, *future.result())
    return get


def test_every_run_notebook_is_tested():
    assert sorted(p.stem for p in RUNS.glob("*.ipynb")) == sorted(NUM_CLASSES)


@pytest.mark.parametrize("name", sorted(NUM_CLASSES))
def test_parameters_cell_is_tagged_and_documented(name):
    nb = nbformat.read(str(RUNS/f"{name}.ipynb"), as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert first.metadata.get("tags") == ["parameters"], "the first code cell must be the tagged parameters cell"
    params = pm.inspect_notebook(str(RUNS/f"{name}.ipynb"))
    assert set(PARAMS) <= set(params), sorted(params)
    for p, v in params.items(): assert v["help"], f"parameter {p} has no help comment"
    assert params["smoke"]["default"] == "True" and params["protocol"]["default"] == '"lin"'
    assert params["weight"]["default"] == '"facebook/sonata"' and params["out_dir"]["default"] == '""'
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs stay out of git (nbdev_clean)"


@pytest.mark.parametrize("name", sorted(NUM_CLASSES))
def test_default_run(name, executed):
    "Defaults: a smoke run whose experiment folder holds the executed notebook, its HTML, the report and the metrics"
    exp, nb_path, html = executed(name)
    if name == "custom": exp = exp/"exp"  # custom.ipynb keeps data/ and exp/ in out_dir
    assert nb_path == executed(name)[0]/f"{name}.ipynb" and html == nb_path.with_suffix(".html")
    metrics = json.loads((exp/"metrics.json").read_text())
    k = NUM_CLASSES[name]
    for key in ("mIoU", "mAcc", "allAcc"): assert 0 <= metrics[key] <= 1 and math.isfinite(metrics[key]), (key, metrics[key])
    assert len(metrics["iou"]) == len(metrics["acc"]) == k
    assert metrics["mIoU"] == pytest.approx(sum(metrics["iou"].values()) / k)
    tester = json.loads((exp/"result"/"metrics.json").read_text())  # the precise evaluation of the experiment
    assert metrics["mIoU"] == pytest.approx(tester["mIoU"])
    for f in ("model/model_best.pth", "log/metrics.jsonl", "config/config.py", "report.html"): assert (exp/f).is_file(), f
    nb = json.loads(nb_path.read_text())
    assert "widgets" not in nb["metadata"]
    cells = nb["cells"]
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in cells)
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    text = lambda v: "".join(v) if isinstance(v, list) else v  # nbformat stores multi-line strings as lists of lines
    figs = [{k: text(v) for k, v in o["data"].items()} for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    # curves, IoU bars, test scene (custom: + the scan before training and the three zero-training views)
    assert len(figs) == 3 + 4 * (name == "custom"), len(figs)
    if name == "custom": assert any("ScanNet-20 classes, zero training" in d["text/html"] for d in figs)
    assert all("text/html" in d for d in figs), "a plotly output without its offline HTML"
    assert sum("plotly.js v" in d["text/html"] for d in figs) == 1  # plotly.js once per notebook
    table = "".join(text(o["data"].get("text/html", "")) for o in outputs if o["output_type"] == "execute_result")
    assert "mIoU/mAcc/allAcc" in table and all(f"<td>{n}</td>" in table for n in tester["iou"])
    page = html.read_text()
    assert page.count("* plotly.js v") == 1 and page.count("Plotly.newPlot(") == len(figs)
    assert cdn_uses(page) == [] and "widget-state" not in page


def test_s3dis_6fold(executions):
    "test_area=6fold: six folds, each area held out once, summed into 6-fold.json; the notebook shows the summed table"
    exp, future = executions["6fold"]
    nb_path, _ = future.result()
    six = json.loads((exp/"6-fold.json").read_text())
    metrics = json.loads((exp/"metrics.json").read_text())
    assert metrics["mIoU"] == pytest.approx(six["mIoU"]) and len(metrics["folds"]) == 6
    for k in range(1, 7): assert (exp/f"Area_{k}"/"result"/f"Area_{k}.pth").is_file()
    total = sum(json.loads((exp/f"Area_{k}"/"result"/"metrics.json").read_text())["target"][2] for k in range(1, 7))
    assert six["target"][2] == total > 0  # wall points of the six test areas
    text = nb_path.read_text()
    assert "(6-fold)" in text and f"{six['mIoU']:.4f}" in text


def test_bad_protocol_names_the_choices(executions):
    "A wrong protocol stops the run with the choices; the executed copy and its HTML still show the error"
    exp, future = executions["bad protocol"]
    with pytest.raises(PapermillExecutionError) as err: future.result()
    assert "protocol='linear': choose one of lin" in str(err.value)
    assert "choose one of lin" in (exp/"scannet.html").read_text()


def test_missing_data_root_names_it(executions):
    "A real run (smoke=False) on a data root that does not exist names it and how to make it, before any training"
    exp, future = executions["no data root"]
    with pytest.raises(PapermillExecutionError) as err: future.result()
    assert "data_root ../../data/no-such-scannet does not exist" in str(err.value) and "preprocess" in str(err.value)
    assert not (exp/"model").exists()


def legends(dom: str) -> dict[str, list[str]]:
    "Entries of every plotly legend in a dumped DOM, by legend id (legend, legend2, ...), in page order"
    out = {}
    for key, name in re.findall(r'class="(legend\d*)text"[^>]*>([^<]*)<', dom): out.setdefault(key, []).append(name)
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_executed_html_renders_offline(executed, tmp_path):
    "The executed run notebook's HTML in headless Chromium, network off: plotly loads, legends name the classes, 3D points drawn"
    from PIL import Image
    from sonata_nb.classes import SCANNET20_NAMES, SCANNET20_PALETTE
    from sonata_nb.viz import ERROR_PALETTE, scene_prediction, subsample
    exp, _, html = executed("scannet")
    s = scene_prediction(exp, "demo_val_000")
    idx = subsample(len(s["coord"]), 30_000)
    seg, pred = s["segment"][idx], s["pred"][idx]
    shot = tmp_path/"page.png"
    r = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path}/profile", "--virtual-time-budget=8000", "--window-size=1400,7000",
                        f"--screenshot={shot}", "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=180)
    found = legends(r.stdout)
    curves = ["train loss", "lr", "val loss", "val mIoU", "val mAcc", "val allAcc"]  # the first figure's legend
    assert found["legend"] == curves + [("ignored" if c < 0 else SCANNET20_NAMES[c]) for c in np.unique(seg)]
    assert found["legend2"] == [SCANNET20_NAMES[c] for c in np.unique(pred)]
    assert found["legend3"] == ["ignored", "correct", "wrong"][(0 if (seg < 0).any() else 1):]
    im = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    near = lambda rgb: np.abs(im - np.asarray(rgb, int)).max(-1) <= 6
    wrong = near(ERROR_PALETTE[1])
    rows = np.flatnonzero(wrong.sum(1) > 0)
    assert len(rows), "the errors panel drew no wrong points"
    band = slice(max(rows.min() - 300, 0), rows.max() + 300)  # the row of the three panels
    left, width = 250, im.shape[1] - 250  # the notebook's left margin holds the prompts
    third = width // 3
    common = np.bincount(seg[seg >= 0]).argmax()  # the most frequent ground-truth class: drawn in the first panel
    assert near(SCANNET20_PALETTE[common])[band, left:left + third].sum() > 50
    assert wrong[band, left + 2 * third - 100:].sum() > 50
