"""Whether the compiled Triton kernels can run here (CUDA, Triton installed, not its CPU interpreter), and the mark for their tests;
the older Tritons the compile checks also run with."""
import importlib.util, os
from pathlib import Path

import pytest
import torch


def kernels_on_cuda() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None and not os.environ.get("TRITON_INTERPRET")


on_cuda = pytest.mark.skipif(not kernels_on_cuda(), reason="CUDA and Triton only: the compiled kernels")


OLDER_TRITONS = ("3.6.0",)  # torch 2.11's: its compiler failed on tiles the newer one compiles (cell kernels, 2026-12-07)


def older_triton(version:str) -> dict:
    "The environment of a check run with Triton `version` first on the path (installed beside ours by .ci/run); skips where it is missing"
    root = Path(__file__).resolve().parents[1]
    site = root / ".ci" / f"triton-{version}"
    if not (site / "triton").is_dir():
        pytest.skip(f"no Triton {version} at {site}: `python -m pip install --no-deps --target {site} triton=={version}` (.ci/run does)")
    return dict(PYTHONPATH=f"{site}{os.pathsep}{root}", SONATA_EXPECT_TRITON=version)
