"""nbs/40_probe_run.ipynb as papermill runs it: the tagged parameters cell, one real execution with its defaults
(a tiny CPU run on generated demo rooms) writing metrics.json, and a bad parameter failing with a clear error."""
import json, math, os
from pathlib import Path

import pytest

pm = pytest.importorskip("papermill")
from papermill.exceptions import PapermillExecutionError

REPO = Path(__file__).resolve().parents[1]
NBS = REPO/"nbs"
NB = NBS/"40_probe_run.ipynb"
PARAMS = ("config", "weight", "data_root", "options", "out_dir", "seed")


def run(tmp_path, **parameters):
    os.environ["HF_HUB_OFFLINE"] = "1"  # inherited by the kernel
    out = tmp_path/"run.ipynb"
    pm.execute_notebook(str(NB), str(out), kernel_name="python3", cwd=str(NBS), progress_bar=False,
                        parameters=parameters)
    return json.loads(out.read_text())


def test_parameters_cell_is_tagged_and_documented():
    params = pm.inspect_notebook(str(NB))
    assert set(PARAMS) <= set(params), sorted(params)
    for name in PARAMS: assert params[name]["help"], f"parameter {name} has no help comment"
    assert params["weight"]["default"] == "None"
    assert params["out_dir"]["default"] == '""'
    assert params["config"]["default"].strip('"').endswith("semseg-demo-ft.py")
    assert (NBS/params["config"]["default"].strip('"')).is_file()  # the default config exists, relative to nbs/


def test_default_run_writes_metrics(tmp_path):
    "The defaults with the outputs (and the generated demo rooms) in tmp_path"
    out_dir = tmp_path/"exp"
    nb = run(tmp_path, out_dir=str(out_dir), data_root=str(tmp_path/"demo"))
    metrics = json.loads((out_dir/"metrics.json").read_text())
    for key in ("mIoU", "mAcc", "allAcc"):
        assert 0 <= metrics[key] <= 1 and math.isfinite(metrics[key]), (key, metrics[key])
    assert len(metrics["iou"]) == len(metrics["acc"]) == len(metrics["names"]) == 20
    assert all(0 <= v <= 1 for v in metrics["iou"])
    assert metrics["mIoU"] == pytest.approx(sum(metrics["iou"]) / 20)
    assert metrics["config"].endswith("semseg-demo-ft.py") and metrics["weight"] is None and metrics["seed"] == 0
    # the summary is the tester's precise evaluation of the experiment written in out_dir
    tester = json.loads((out_dir/"result"/"metrics.json").read_text())
    assert metrics["mIoU"] == pytest.approx(tester["mIoU"]) and metrics["allAcc"] == pytest.approx(tester["allAcc"])
    for f in ("model/model_best.pth", "log/train.log", "log/metrics.jsonl", "config/config.py", "val_scene.html"):
        assert (out_dir/f).is_file(), f"missing {f}"
    val = [json.loads(l) for l in (out_dir/"log"/"metrics.jsonl").read_text().splitlines() if '"val"' in l]
    assert metrics["best_val_mIoU"] == pytest.approx(max(r["mIoU"] for r in val))
    # the executed copy: papermill's injected parameters, the per-class table and the 3D figure
    cells = nb["cells"]
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in cells)
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert "otherfurniture" in text and "mIoU/mAcc/allAcc" in text
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs)


def test_missing_config_names_the_file(tmp_path):
    missing = "../configs/demo/semseg-demo-nope.py"
    with pytest.raises(PapermillExecutionError) as err:
        run(tmp_path, config=missing, out_dir=str(tmp_path/"exp"), data_root=str(tmp_path/"demo"))
    assert "FileNotFoundError" in str(err.value) and "semseg-demo-nope.py" in str(err.value)
    assert not (tmp_path/"exp"/"metrics.json").exists()


def test_missing_weight_names_the_file(tmp_path):
    with pytest.raises(PapermillExecutionError) as err:
        run(tmp_path, weight="../exp/no-such-run/model_best.pth", out_dir=str(tmp_path/"exp"),
            data_root=str(tmp_path/"demo"))
    assert "no-such-run/model_best.pth" in str(err.value)
