"bench/kernel_sass.py: a kernel compiled as launched, its loops' instruction mix (no GPU needed)"
import importlib.util, re, sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.parametrize("flip", [False, True])
def test_convolution_kernel_is_one_pipelined_loop(capsys, flip):
    "The convolution kernel's main loop: one loop (not a loop per cell around one per chunk), wgmma fed by asynchronous copies"
    import kernel_sass
    kernel_sass.main(["conv", "--channels", "48"] + (["--flip"] if flip else []))
    out = capsys.readouterr().out
    found = re.findall(r"^loop \S+: (\d+) instructions; (.*)$", out, re.M)
    assert len(found) == 1, out
    kinds = dict((k, int(n)) for k, n in (part.rsplit(" ", 1) for part in found[0][1].split(", ")))
    assert kinds.get("HGMMA", 0) >= 1 and kinds.get("LDGSTS", 0) >= 1 and kinds.get("WARPGROUP.DEPBAR", 0) == 1, out


def test_attention_loop_counts_exponentials(capsys):
    import kernel_sass
    kernel_sass.main(["attention_fwd"])
    out = capsys.readouterr().out
    assert re.search(r"^loop \S+: \d+ instructions; .*MUFU \d+", out, re.M), out
