"""Run every notebook in nbs/ with `nbdev_test` (cells flagged with `tst_flags` are skipped), each in its own process.
The run notebooks in nbs/runs/ are executed by tests/test_papermill.py (with their defaults, as nbdev_test would), not twice.
Each process is a fork of one Python that has imported torch and spconv already (tests/forkserver.py): a fresh
Python would spend ~9 s of each notebook's test on those imports."""
import os, sys
from pathlib import Path

import pytest
from nbdev.config import get_config

sys.path.insert(0, str(Path(__file__).parent))
from forkserver import ForkServer

cfg = get_config()
NBS = sorted(p for p in cfg.nbs_path.rglob("*.ipynb")
             if not any(s.startswith(("_", ".")) for s in p.relative_to(cfg.nbs_path).parts)
             and p.relative_to(cfg.nbs_path).parts[0] != "runs")
NBDEV_TEST = Path(sys.executable).parent / "nbdev_test"  # the venv's console script


@pytest.fixture(scope="module")
def nbdev_tests(request):
    "`nbdev_test --path NB` for each selected notebook, started in test order, one at a time"
    selected = [item.callspec.params["nb"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")]
    server = ForkServer([(str(nb), [NBDEV_TEST, "--path", nb], cfg.config_path, os.environ) for nb in selected])
    yield server
    server.close()


@pytest.mark.parametrize("nb", NBS, ids=lambda p: p.name)
def test_notebook(nb, nbdev_tests):
    # a process per notebook: exported cells re-register their classes, which must not leak into other tests
    rc, output = nbdev_tests.wait(str(nb))
    assert rc == 0, f"{nb.name} failed:\n{output[-8000:]}"
