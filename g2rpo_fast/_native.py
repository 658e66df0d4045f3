"""Loader of the C++ CPU kernels: `torch.ops.g2rpo_fast.*` from the extension `g2rpo_fast._C`.

`CMakeLists.txt` builds `_C` from `kernels/cpu/*.cpp` (setup.py runs it when CMake and a C++
compiler are found). Importing this module loads it, which registers the ops' schemas and CPU
kernels, and registers here their fake (meta) implementations, so that FakeTensor tracing
(torch.compile, torch.export) knows the output shapes without running a kernel.

`AVAILABLE` says whether the ops exist. When `_C` was not built (a plain install without a
compiler), one warning says so at import and the ops keep their PyTorch path.
"""
from __future__ import annotations

import warnings

import torch


class NativeKernelsUnavailable(UserWarning):
    """`g2rpo_fast._C` is not built: CPU ops use the PyTorch reference path."""


def _load() -> str | None:
    try:
        from . import _C  # noqa: F401  (loading the library registers torch.ops.g2rpo_fast.*)
    except ImportError as e:
        return str(e)
    return None


LOAD_ERROR = _load()
AVAILABLE = LOAD_ERROR is None

if not AVAILABLE:
    warnings.warn(
        f"g2rpo_fast: the C++ CPU kernels are not built ({LOAD_ERROR}); CPU ops use the PyTorch path. "
        "Reinstall with CMake and a C++ compiler present (`scripts/setup_env.sh`) to build them.",
        NativeKernelsUnavailable,
        stacklevel=2,
    )


def cpu_capability() -> str | None:
    """Which copy of the kernels runs on this CPU ("DEFAULT", "AVX2", "AVX512"), None if not built."""
    return torch.ops.g2rpo_fast.cpu_capability() if AVAILABLE else None


def _rows(like: torch.Tensor, n, dtype=torch.float32):
    return like.new_empty((n,), dtype=dtype)


if AVAILABLE:

    @torch.library.register_fake("g2rpo_fast::logps_fwd")
    def _logps_fwd_fake(logits, ids, inv_temperature, with_entropy):
        n = ids.numel()
        return _rows(logits, n), _rows(logits, n), _rows(logits, n), _rows(logits, n if with_entropy else 0)

    @torch.library.register_fake("g2rpo_fast::logps_bwd")
    def _logps_bwd_fake(logits, ids, grad, rowmax, logsum, inv_temperature):
        return logits.new_empty((ids.numel(), logits.shape[-1]))

    @torch.library.register_fake("g2rpo_fast::logps_bwd_")
    def _logps_bwd_inplace_fake(logits, ids, grad, rowmax, logsum, inv_temperature):
        return None

    @torch.library.register_fake("g2rpo_fast::g2rpo_loss_fwd")
    def _g2rpo_loss_fwd_fake(logits, ids, coef, advantages, old_logps, ref_logps, inv_temperature, beta,
                             epsilon_low, epsilon_high, delta):
        return tuple(_rows(logits, ids.numel()) for _ in range(8))

    @torch.library.register_fake("g2rpo_fast::fused_linear_logps_fwd")
    def _fused_linear_logps_fwd_fake(hidden, weight, bias, ids, temperature, with_entropy):
        n = hidden.shape[0]
        return _rows(hidden, n), _rows(hidden, n), _rows(hidden, n if with_entropy else 0)

    @torch.library.register_fake("g2rpo_fast::fused_linear_logps_bwd")
    def _fused_linear_logps_bwd_fake(hidden, weight, bias, ids, lse, grad, temperature, need_hidden, need_weight,
                                     need_bias):
        none = lambda: hidden.new_empty((0,))  # a fresh one each: outputs may not alias
        return (hidden.new_empty(hidden.shape) if need_hidden else none(),
                weight.new_empty(weight.shape) if need_weight else none(),
                bias.new_empty(bias.shape) if (need_bias and bias is not None) else none())
