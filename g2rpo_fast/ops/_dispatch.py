"""Which implementation runs: CUDA tensors -> Triton; CPU -> PyTorch reference, or the same
Triton kernels when TRITON_INTERPRET=1 (how CI checks kernels without a GPU).

`G2RPO_FAST_BACKEND=torch` forces the reference everywhere (debugging, parity checks).
"""
import contextlib
import os

import torch


def use_triton(x: torch.Tensor) -> bool:
    forced = os.environ.get("G2RPO_FAST_BACKEND", "").lower()
    if forced == "torch":
        return False
    if x.is_cuda:
        return True
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@contextlib.contextmanager
def forced_backend(name: str):
    """Run the ops on one path inside the block (`"torch"`: the reference), e.g. for parity checks."""
    before = os.environ.get("G2RPO_FAST_BACKEND")
    os.environ["G2RPO_FAST_BACKEND"] = name
    try:
        yield
    finally:
        if before is None:
            del os.environ["G2RPO_FAST_BACKEND"]
        else:
            os.environ["G2RPO_FAST_BACKEND"] = before
