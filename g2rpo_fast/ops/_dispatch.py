"""Which implementation runs: CUDA tensors -> Triton; CPU -> PyTorch reference, or the same
Triton kernels when TRITON_INTERPRET=1 (how CI checks kernels without a GPU).

`G2RPO_FAST_BACKEND=torch` forces the reference everywhere (debugging, parity checks).
"""
import os

import torch


def use_triton(x: torch.Tensor) -> bool:
    forced = os.environ.get("G2RPO_FAST_BACKEND", "").lower()
    if forced == "torch":
        return False
    if x.is_cuda:
        return True
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
