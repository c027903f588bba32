"The five recipe scripts stop with a clear error before training when the weight or the data folder is missing."
import os, subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"scannet_linear": "data/scannet", "scannet_decoder": "data/scannet", "scannet_finetune": "data/scannet",
           "scannet200_linear": "data/scannet", "s3dis_linear": "data/s3dis"}


def run(name, weight):
    return subprocess.run(["sh", str(ROOT/"downstream_training_scripts"/f"{name}.sh")], capture_output=True, text=True,
                          env={**os.environ, "WEIGHT": str(weight)})


@pytest.mark.parametrize("name", SCRIPTS)
def test_missing_weight_is_named(name, tmp_path):
    r = run(name, tmp_path/"nope.pth")
    assert r.returncode == 2 and f"pretrained weight not found: {tmp_path/'nope.pth'}" in r.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_missing_data_folder_is_named(name, tmp_path):
    if (ROOT/SCRIPTS[name]).exists(): pytest.skip(f"{SCRIPTS[name]} exists in this checkout")
    weight = tmp_path/"w.pth"; weight.touch()
    r = run(name, weight)
    assert r.returncode == 2 and f"data folder not found: {SCRIPTS[name]}" in r.stderr
