"Run every library notebook in nbs/ the way `nbdev_test` does (cells flagged with `tst_flags` are skipped)."
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_nb  # aliased: pytest would collect a bare `test_nb`

cfg = get_config()
NBS = sorted(p for p in cfg.nbs_path.rglob("*.ipynb")
             if not any(s.startswith(("_", ".")) for s in p.relative_to(cfg.nbs_path).parts))
FLAGS = cfg.tst_flags.split()


@pytest.mark.parametrize("nb", NBS, ids=lambda p: p.name)
def test_notebook(nb):
    ok, _ = run_nb(nb, skip_flags=FLAGS, basepath=cfg.config_path)
    assert ok, f"{nb.name} failed: run `nbdev_test --path nbs/{nb.name} --do_print` to see the failing cell"
