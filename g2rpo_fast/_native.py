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

    @torch.library.register_fake("g2rpo_fast::fused_linear_g2rpo_loss")
    def _fused_linear_g2rpo_loss_fake(hidden, weight, bias, ids, coef, advantages, old_logps, ref_logps, temperature,
                                      beta, epsilon_low, epsilon_high, delta, need_hidden, need_weight, need_bias):
        rows = tuple(_rows(hidden, hidden.shape[0]) for _ in range(5))
        return rows + _fused_linear_logps_bwd_fake(hidden, weight, bias, ids, None, None, temperature, need_hidden,
                                                   need_weight, need_bias)


# ----------------------------------------------------------------------------- launchers
# Drop-ins for the Triton launchers (kernels/triton/logps.py, kernels/triton/token_loss.py,
# kernels/triton/fused_linear.py): same arguments, same outputs (None where those give None), so the
# existing autograd Functions in g2rpo_fast/ops can call either by device.

def launch_logps_fwd(logits2d, ids, inv_t, with_entropy):
    """As `kernels.logps.launch_logps_fwd`: (logp, rowmax, logsum, entropy|None), fp32 [N]."""
    logp, rowmax, logsum, entropy = torch.ops.g2rpo_fast.logps_fwd(logits2d, ids, float(inv_t), bool(with_entropy))
    return logp, rowmax, logsum, (entropy if with_entropy else None)


def launch_logps_bwd(logits2d, ids, grad_rows, rowmax, logsum, inv_t, out=None):
    """As `kernels.logps.launch_logps_bwd`; `out` is None or the logits buffer itself (in place)."""
    grad_rows = grad_rows.contiguous()
    if out is None:
        return torch.ops.g2rpo_fast.logps_bwd(logits2d, ids, grad_rows, rowmax, logsum, float(inv_t))
    if out is not logits2d:
        raise ValueError("`out` must be None or the logits tensor itself (in-place backward)")
    torch.ops.g2rpo_fast.logps_bwd_(logits2d, ids, grad_rows, rowmax, logsum, float(inv_t))
    return logits2d


def launch_g2rpo_loss_fwd(logits2d, ids, coef, adv_tok, old, ref, *, inv_t, beta, eps_low, eps_high, delta):
    """As `kernels.token_loss.launch_g2rpo_loss_fwd`: logp, rowmax, logsum, c·L, c·dL/dlogp, kl, low, high."""
    return torch.ops.g2rpo_fast.g2rpo_loss_fwd(logits2d, ids, coef, adv_tok, old, ref, float(inv_t), float(beta),
                                               float(eps_low), float(eps_high),
                                               None if delta is None else float(delta))


def fused_linear_forward(hidden, weight, bias, token_ids, temperature, return_entropy):
    """As `kernels.fused_linear.forward`: (logps, lse, entropy|None), fp32 [N]."""
    logps, lse, entropy = torch.ops.g2rpo_fast.fused_linear_logps_fwd(hidden, weight, bias, token_ids,
                                                                       float(temperature), bool(return_entropy))
    return logps, lse, (entropy if return_entropy else None)


def fused_linear_backward(hidden, weight, bias, token_ids, lse, grad_logps, temperature, need_hidden, need_weight,
                          need_bias):
    """As `kernels.fused_linear.backward`: (d_hidden, d_weight, d_bias), None where not needed."""
    need_bias = bool(need_bias) and bias is not None
    d_h, d_w, d_b = torch.ops.g2rpo_fast.fused_linear_logps_bwd(
        hidden, weight, bias, token_ids, lse, grad_logps.to(torch.float32).contiguous(), float(temperature),
        bool(need_hidden), bool(need_weight), need_bias)
    return (d_h if need_hidden else None, d_w if need_weight else None, d_b if need_bias else None)


def fused_linear_g2rpo_loss(hidden, weight, bias, token_ids, coef, adv_tok, old, ref, *, temperature, beta, eps_low,
                            eps_high, delta, need_hidden, need_weight, need_bias):
    """The token-level loss from hidden states with its gradients in one pass (3 GEMMs, no [N, V]):
    (logp, c·L, kl, low, high) fp32 [N] and (d_hidden, d_weight, d_bias) of Σ c·L, None where not
    needed. No Triton twin yet; `torch.ops.g2rpo_fast.linear_token_loss` (ops/library.py) is its
    differentiable op."""
    need_bias = bool(need_bias) and bias is not None
    out = torch.ops.g2rpo_fast.fused_linear_g2rpo_loss(
        hidden, weight, bias, token_ids, coef, adv_tok, old, ref, float(temperature), float(beta), float(eps_low),
        float(eps_high), None if delta is None else float(delta), bool(need_hidden), bool(need_weight), need_bias)
    d_h, d_w, d_b = out[5:]
    return (*out[:5], d_h if need_hidden else None, d_w if need_weight else None, d_b if need_bias else None)
