"""Whether the compiled Triton kernels can run here (CUDA, Triton installed, not its CPU interpreter), and the mark for their tests."""
import importlib.util, os

import pytest
import torch


def kernels_on_cuda() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("triton") is not None and not os.environ.get("TRITON_INTERPRET")


on_cuda = pytest.mark.skipif(not kernels_on_cuda(), reason="CUDA and Triton only: the compiled kernels")


OLDER_TRITONS = ("3.6.0",)  # torch 2.11's: its compiler failed on tiles the newer one compiles (cell kernels, 2026-12-07)
