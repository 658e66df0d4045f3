"""Which implementation every op runs: one setting, decided once.

- ``"auto"`` (the default): CUDA tensors run the Triton kernels, CPU tensors the PyTorch
  reference (the C++ CPU kernels will slot in here);
- ``"triton"``: the Triton kernels everywhere; CPU tensors run them in Triton's interpreter
  (how CI checks the kernels without a GPU);
- ``"torch"``: the PyTorch reference everywhere (debugging, parity checks).

The setting is read from the environment once, when this module is imported:
``G2RPO_FAST_BACKEND=auto|triton|torch``, else ``"triton"`` when ``TRITON_INTERPRET=1`` (the
interpreter was asked for), else ``"auto"``. After that only ``set_backend(name)`` or the
``use_backend(name)`` context manager change it; the environment is never read again nor written.
"""
from __future__ import annotations

import contextlib
import os

import torch

SETTINGS = ("auto", "triton", "torch")


def _check(name) -> str:
    if name not in SETTINGS:
        raise ValueError(f"`backend` must be one of {list(SETTINGS)}, got {name!r}")
    return name


def _from_environment() -> str:
    forced = os.environ.get("G2RPO_FAST_BACKEND", "").strip().lower()
    if forced:
        if forced not in SETTINGS:
            raise ValueError(f"`G2RPO_FAST_BACKEND` must be one of {list(SETTINGS)}, got {forced!r}")
        return forced
    return "triton" if os.environ.get("TRITON_INTERPRET", "0") == "1" else "auto"


_setting = _from_environment()


def get_backend() -> str:
    return _setting


def set_backend(name: str) -> str:
    """Switch every op to `name` ("auto" | "triton" | "torch"); returns the previous setting."""
    global _setting
    previous, _setting = _setting, _check(name)
    return previous


@contextlib.contextmanager
def use_backend(name: str):
    """Run the ops on one path inside the block, e.g. ``with use_backend("torch"):`` for a reference."""
    previous = set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def use_triton(x: torch.Tensor) -> bool:
    """Whether an op on `x` runs its Triton kernel (else its PyTorch reference)."""
    if _setting == "auto":
        return x.is_cuda
    return _setting == "triton"
