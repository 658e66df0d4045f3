"""Which implementation every op runs: one setting, decided once.

- ``"auto"`` (the default): CUDA tensors run the Triton kernels; CPU tensors run the C++
  kernels (`g2rpo_fast._C`, through the custom ops of `ops/library.py`) when the extension is
  built, else the PyTorch reference;
- ``"native"``: the C++ kernels for CPU tensors (an error if `_C` is not built); CUDA tensors
  keep Triton (there are no CUDA C++ kernels);
- ``"triton"``: the Triton kernels everywhere; CPU tensors run them in Triton's interpreter
  (how CI checks the kernels without a GPU);
- ``"torch"``: the PyTorch reference everywhere (debugging, parity checks).

Each op sends float64 inputs (a test dtype) to its reference. The setting is read from the
environment once, when this module is imported: ``G2RPO_FAST_BACKEND=auto|native|triton|torch``,
else ``"triton"`` when ``TRITON_INTERPRET=1`` (the interpreter was asked for), else ``"auto"``.
After that only ``set_backend(name)`` or the ``use_backend(name)`` context manager change it;
the environment is never read again nor written.
"""
from __future__ import annotations

import contextlib
import os

import torch

from g2rpo_fast import _native

SETTINGS = ("auto", "native", "triton", "torch")
NATIVE_BUILT = _native.AVAILABLE  # whether torch.ops.g2rpo_fast's C++ kernels exist, known once


def _check(name, what="`backend`") -> str:
    if name not in SETTINGS:
        raise ValueError(f"{what} must be one of {list(SETTINGS)}, got {name!r}")
    if name == "native" and not NATIVE_BUILT:
        raise ValueError(f"{what}='native' needs the C++ kernels, which are not built ({_native.LOAD_ERROR}); "
                         "reinstall with CMake and a C++ compiler (scripts/setup_env.sh)")
    return name


def _from_environment() -> str:
    forced = os.environ.get("G2RPO_FAST_BACKEND", "").strip().lower()
    if forced:
        return _check(forced, "`G2RPO_FAST_BACKEND`")
    return "triton" if os.environ.get("TRITON_INTERPRET", "0") == "1" else "auto"


_setting = _from_environment()


def get_backend() -> str:
    return _setting


def set_backend(name: str) -> str:
    """Switch every op to `name` ("auto" | "native" | "triton" | "torch"); returns the previous setting."""
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


def implementation(x: torch.Tensor) -> str:
    """Which path an op on `x` takes: "triton", "native" (C++) or "torch" (the reference)."""
    if _setting in ("auto", "native"):
        if x.is_cuda:
            return "triton"
        return "native" if NATIVE_BUILT and x.device.type == "cpu" else "torch"
    return _setting


def use_triton(x: torch.Tensor) -> bool:
    """Whether an op on `x` runs its Triton kernel."""
    return implementation(x) == "triton"


def use_native(x: torch.Tensor) -> bool:
    """Whether an op on `x` runs its C++ CPU kernel."""
    return implementation(x) == "native"


def use_custom_op(x: torch.Tensor, path: str) -> bool:
    """Whether an op on `x` taking `path` calls its custom op (`ops/library.py`): always on the
    native path; on CUDA only while torch.compile traces (eager CUDA keeps the autograd Functions
    over the Triton launchers, which also offer the in-place backward)."""
    return path == "native" or (path == "triton" and x.is_cuda and torch.compiler.is_compiling())
