"bench/kernel_sass.py: a kernel compiled as launched, its loops' instruction mix (no GPU needed)"
import importlib.util, re, sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def loops(out:str) -> list[dict]:
    "Each loop's instruction counts by kind, from kernel_sass's output"
    return [dict((k, int(n)) for k, n in (part.rsplit(" ", 1) for part in mix.split(", ")))
            for mix in re.findall(r"^loop \S+: \d+ instructions; (.*)$", out, re.M)]


@pytest.mark.parametrize("flip", [False, True])
def test_convolution_kernel_is_one_pipelined_loop_at_one_chunk(capsys, flip):
    "48 channels (one chunk per cell): one loop over the cells (not a loop per cell around one per chunk), wgmma fed by asynchronous copies"
    import kernel_sass
    kernel_sass.main(["conv", "--channels", "48"] + (["--flip"] if flip else []))
    out = capsys.readouterr().out
    found = loops(out)
    assert len(found) == 1, out
    assert found[0].get("HGMMA", 0) >= 1 and found[0].get("LDGSTS", 0) >= 1 and found[0].get("WARPGROUP.DEPBAR", 0) == 1, out


def test_convolution_kernel_nests_its_loops_at_several_chunks(capsys):
    "384 channels (6 chunks of 64 per cell): a loop per cell around the pipelined loop over its chunks (measured faster there)"
    import kernel_sass
    kernel_sass.main(["conv", "--channels", "384"])
    out = capsys.readouterr().out
    found = loops(out)
    assert len(found) == 2, out
    inner = [mix for mix in found if mix.get("HGMMA", 0) >= 1 and mix.get("LDGSTS", 0) >= 1]
    assert inner, out


def test_attention_loop_counts_exponentials(capsys):
    import kernel_sass
    kernel_sass.main(["attention_fwd"])
    out = capsys.readouterr().out
    assert re.search(r"^loop \S+: \d+ instructions; .*MUFU \d+", out, re.M), out
