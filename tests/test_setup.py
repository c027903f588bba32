"The environment scripts/setup.sh leaves: JupyterLab opens without asking for a build."
import shutil, subprocess, sys
from pathlib import Path

import pytest


def test_jupyterlab_needs_no_build():
    "open3d's dash extension made JupyterLab show 'Build Recommended' at every start; setup.sh removes it"
    jupyter = Path(sys.executable).with_name("jupyter")
    if not jupyter.exists(): pytest.skip("no jupyter in this environment")
    r = subprocess.run([str(jupyter), "labextension", "list"], capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Build recommended" not in out and "needs to be included in build" not in out, out
