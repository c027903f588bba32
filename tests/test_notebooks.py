"""Run every notebook in nbs/ with `nbdev_test` (cells flagged with `tst_flags` are skipped), each in its own process.
The run notebooks in nbs/runs/ are executed by tests/test_papermill.py (with their defaults, as nbdev_test would), not twice.
Each process is forked from one Python that has imported torch and spconv already (tests/forkserver.py): a fresh
Python would spend ~9 s of each notebook's test on those imports."""
import os, sys
from pathlib import Path

import pytest
from nbdev.config import get_config

cfg = get_config()
NBS = sorted(p for p in cfg.nbs_path.rglob("*.ipynb")
             if not any(s.startswith(("_", ".")) for s in p.relative_to(cfg.nbs_path).parts)
             and p.relative_to(cfg.nbs_path).parts[0] != "runs")
NBDEV_TEST = Path(sys.executable).parent / "nbdev_test"  # the venv's console script


@pytest.mark.parametrize("nb", NBS, ids=lambda p: p.name)
def test_notebook(nb, forkserver):
    # a process per notebook: exported cells re-register their classes, which must not leak into other tests
    run = forkserver.run([NBDEV_TEST, "--path", nb], cwd=cfg.config_path, env=os.environ)
    assert run.returncode == 0, f"{nb.name} failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
