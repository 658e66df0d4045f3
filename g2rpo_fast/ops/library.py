"""The differentiable custom ops `torch.ops.g2rpo_fast.*` that the ops dispatch to on the native path.

Each op is a `torch.library.custom_op` with its CPU kernel in C++ (`g2rpo_fast._C`, through the
launchers of `g2rpo_fast._native`), its CUDA kernel in Triton (`register_kernel("cuda")`), a fake
implementation (output shapes for FakeTensor tracing) and an autograd formula
(`register_autograd`), so that `torch.compile(fullgraph=True)` traces them without a graph break
and AOTAutograd sees their backward. The C++ library registers its low-level ops
(`logps_fwd`, `logps_bwd`, ...) in the same namespace; these are the ones users differentiate.

- `token_logps(logits, ids, inv_t, with_entropy)` -> logp, rowmax, logsum, entropy;
  backward: `token_logps_backward`;
- `token_loss(logits, ids, coef, adv, old?, ref?, inv_t, beta, eps_low, eps_high, delta?)` ->
  c·L, c·dL/dlogp, rowmax, logsum, kl, low, high; backward: `token_logps_backward`;
- `linear_logps(hidden, weight, bias?, ids, T, with_entropy)` -> logp, lse, entropy;
  backward: `linear_logps_backward`;
- `linear_token_loss(hidden, weight, bias?, ids, coef, adv, old?, ref?, T, ..., need_*)` ->
  Σ c·L, kl, low, high and the gradients of Σ c·L; backward scales them (CPU only).

`ids` is flat `[N]` int64; logits are `[N, V]` or `[B, T, V]` with a unit last stride; every
per-token output is fp32 `[N]`. An output that was not asked for (entropy, a gradient nobody
needs) is an empty tensor. The in-place logits backward (`inplace_backward=True`) is not an op:
the autograd Functions of `ops/logps.py` and `ops/token_loss.py` provide it with the same kernels.
"""
from __future__ import annotations

import torch
from torch import Tensor

from g2rpo_fast import _native

_F32 = torch.float32


def _rows(like: Tensor, n: int) -> Tensor:
    return like.new_empty((n,), dtype=_F32)


# ----------------------------------------------------------------------------- token_logps

@torch.library.custom_op("g2rpo_fast::token_logps", mutates_args=(), device_types="cpu")
def token_logps(logits: Tensor, ids: Tensor, inv_temperature: float,
                with_entropy: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    logp, rowmax, logsum, entropy = torch.ops.g2rpo_fast.logps_fwd(logits, ids, inv_temperature, with_entropy)
    return logp, rowmax, logsum, entropy


@token_logps.register_kernel("cuda")
def _token_logps_cuda(logits, ids, inv_temperature, with_entropy):
    from g2rpo_fast.kernels.logps import launch_logps_fwd

    logp, rowmax, logsum, entropy = launch_logps_fwd(logits, ids, inv_temperature, with_entropy)
    return logp, rowmax, logsum, entropy if with_entropy else _rows(logp, 0)


@token_logps.register_fake
def _token_logps_fake(logits, ids, inv_temperature, with_entropy):
    n = ids.numel()
    return _rows(logits, n), _rows(logits, n), _rows(logits, n), _rows(logits, n if with_entropy else 0)


@torch.library.custom_op("g2rpo_fast::token_logps_backward", mutates_args=(), device_types="cpu")
def token_logps_backward(logits: Tensor, ids: Tensor, grad: Tensor, rowmax: Tensor, logsum: Tensor,
                         inv_temperature: float) -> Tensor:
    """d logits `[N, V]` in the logits' dtype: row r is grad[r]·(onehot(ids[r]) − softmax(logits[r]·inv_t))."""
    return torch.ops.g2rpo_fast.logps_bwd(logits, ids, grad, rowmax, logsum, inv_temperature)


@token_logps_backward.register_kernel("cuda")
def _token_logps_backward_cuda(logits, ids, grad, rowmax, logsum, inv_temperature):
    from g2rpo_fast.kernels.logps import launch_logps_bwd

    return launch_logps_bwd(logits, ids, grad, rowmax, logsum, inv_temperature)


@token_logps_backward.register_fake
def _token_logps_backward_fake(logits, ids, grad, rowmax, logsum, inv_temperature):
    return logits.new_empty((ids.numel(), logits.shape[-1]))


def _token_logps_setup(ctx, inputs, output):
    logits, ids, inv_t, _ = inputs
    ctx.save_for_backward(logits, ids, output[1], output[2])
    ctx.logits_shape, ctx.inv_t = logits.shape, inv_t


def _token_logps_grad(ctx, grad_logp, *unused):
    logits, ids, rowmax, logsum = ctx.saved_tensors
    if grad_logp is None:
        return None, None, None, None
    g = (grad_logp.to(_F32) * ctx.inv_t).contiguous()
    dx = torch.ops.g2rpo_fast.token_logps_backward(logits, ids, g, rowmax, logsum, ctx.inv_t)
    return dx.view(ctx.logits_shape), None, None, None


token_logps.register_autograd(_token_logps_grad, setup_context=_token_logps_setup)


# ----------------------------------------------------------------------------- token_loss

@torch.library.custom_op("g2rpo_fast::token_loss", mutates_args=(), device_types="cpu")
def token_loss(logits: Tensor, ids: Tensor, coef: Tensor, advantages: Tensor, old_logps: Tensor | None,
               ref_logps: Tensor | None, inv_temperature: float, beta: float, epsilon_low: float,
               epsilon_high: float, delta: float | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor,
                                                                     Tensor, Tensor]:
    _, rowmax, logsum, loss, dlogp, kl, low, high = torch.ops.g2rpo_fast.g2rpo_loss_fwd(
        logits, ids, coef, advantages, old_logps, ref_logps, inv_temperature, beta, epsilon_low, epsilon_high, delta)
    return loss, dlogp, rowmax, logsum, kl, low, high


@token_loss.register_kernel("cuda")
def _token_loss_cuda(logits, ids, coef, advantages, old_logps, ref_logps, inv_temperature, beta, epsilon_low,
                     epsilon_high, delta):
    from g2rpo_fast.kernels.token_loss import launch_g2rpo_loss_fwd

    _, rowmax, logsum, loss, dlogp, kl, low, high = launch_g2rpo_loss_fwd(
        logits, ids, coef, advantages, old_logps, ref_logps, inv_t=inv_temperature, beta=beta, eps_low=epsilon_low,
        eps_high=epsilon_high, delta=delta)
    return loss, dlogp, rowmax, logsum, kl, low, high


@token_loss.register_fake
def _token_loss_fake(logits, ids, coef, advantages, old_logps, ref_logps, inv_temperature, beta, epsilon_low,
                     epsilon_high, delta):
    return tuple(_rows(logits, ids.numel()) for _ in range(7))


def _token_loss_setup(ctx, inputs, output):
    logits, ids, inv_t = inputs[0], inputs[1], inputs[6]
    ctx.save_for_backward(logits, ids, output[1], output[2], output[3])
    ctx.logits_shape, ctx.inv_t = logits.shape, inv_t


def _token_loss_grad(ctx, grad_loss, *unused):
    logits, ids, dlogp, rowmax, logsum = ctx.saved_tensors
    none = (None,) * 10
    if grad_loss is None:
        return (None, *none)
    g = (dlogp * grad_loss.to(_F32) * ctx.inv_t).contiguous()
    dx = torch.ops.g2rpo_fast.token_logps_backward(logits, ids, g, rowmax, logsum, ctx.inv_t)
    return (dx.view(ctx.logits_shape), *none)


token_loss.register_autograd(_token_loss_grad, setup_context=_token_loss_setup)


# ----------------------------------------------------------------------------- linear_logps

@torch.library.custom_op("g2rpo_fast::linear_logps", mutates_args=(), device_types="cpu")
def linear_logps(hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor, temperature: float,
                 with_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    logp, lse, entropy = torch.ops.g2rpo_fast.fused_linear_logps_fwd(hidden, weight, bias, ids, temperature,
                                                                      with_entropy)
    return logp, lse, entropy


@linear_logps.register_kernel("cuda")
def _linear_logps_cuda(hidden, weight, bias, ids, temperature, with_entropy):
    from g2rpo_fast.kernels.fused_linear import forward

    logp, lse, entropy = forward(hidden, weight, bias, ids, temperature, with_entropy)
    return logp, lse, entropy if with_entropy else _rows(logp, 0)


@linear_logps.register_fake
def _linear_logps_fake(hidden, weight, bias, ids, temperature, with_entropy):
    n = hidden.shape[0]
    return _rows(hidden, n), _rows(hidden, n), _rows(hidden, n if with_entropy else 0)


@torch.library.custom_op("g2rpo_fast::linear_logps_backward", mutates_args=(), device_types="cpu")
def linear_logps_backward(hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor, lse: Tensor,
                          grad: Tensor, temperature: float, need_hidden: bool, need_weight: bool,
                          need_bias: bool) -> tuple[Tensor, Tensor, Tensor]:
    d_h, d_w, d_b = torch.ops.g2rpo_fast.fused_linear_logps_bwd(hidden, weight, bias, ids, lse, grad, temperature,
                                                                need_hidden, need_weight, need_bias)
    return d_h, d_w, d_b


@linear_logps_backward.register_kernel("cuda")
def _linear_logps_backward_cuda(hidden, weight, bias, ids, lse, grad, temperature, need_hidden, need_weight,
                                need_bias):
    from g2rpo_fast.kernels.fused_linear import backward

    grads = backward(hidden, weight, bias, ids, lse, grad, temperature, need_hidden, need_weight, need_bias)
    return tuple(hidden.new_empty((0,)) if g is None else g for g in grads)


@linear_logps_backward.register_fake
def _linear_logps_backward_fake(hidden, weight, bias, ids, lse, grad, temperature, need_hidden, need_weight,
                                need_bias):
    return _linear_grads_fake(hidden, weight, bias, need_hidden, need_weight, need_bias)


def _linear_grads_fake(hidden, weight, bias, need_hidden, need_weight, need_bias):
    empty = lambda: hidden.new_empty((0,))  # a fresh one each: outputs may not alias
    return (hidden.new_empty(hidden.shape) if need_hidden else empty(),
            weight.new_empty(weight.shape) if need_weight else empty(),
            bias.new_empty(bias.shape) if (need_bias and bias is not None) else empty())


def _linear_logps_setup(ctx, inputs, output):
    hidden, weight, bias, ids, temperature, _ = inputs
    ctx.save_for_backward(hidden, weight, bias, ids, output[1])
    ctx.temperature = temperature


def _linear_logps_grad(ctx, grad_logp, *unused):
    hidden, weight, bias, ids, lse = ctx.saved_tensors
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    if grad_logp is None or not (need_h or need_w or need_b):
        return None, None, None, None, None, None
    need_b = need_b and bias is not None
    d_h, d_w, d_b = torch.ops.g2rpo_fast.linear_logps_backward(
        hidden, weight, bias, ids, lse, grad_logp.to(_F32).contiguous(), ctx.temperature, need_h, need_w, need_b)
    return d_h if need_h else None, d_w if need_w else None, d_b if need_b else None, None, None, None


linear_logps.register_autograd(_linear_logps_grad, setup_context=_linear_logps_setup)


# ----------------------------------------------------------------------------- linear_token_loss

@torch.library.custom_op("g2rpo_fast::linear_token_loss", mutates_args=(), device_types="cpu")
def linear_token_loss(hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor, coef: Tensor,
                      advantages: Tensor, old_logps: Tensor | None, ref_logps: Tensor | None,
                      temperature: float, beta: float, epsilon_low: float, epsilon_high: float,
                      delta: float | None, need_hidden: bool, need_weight: bool,
                      need_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Σ_t c_t·L_t from hidden states with its gradients computed in the same pass (3 GEMMs, no
    [N, V]): (loss [], kl, low, high [N], d_hidden, d_weight, d_bias). The C++ kernel only."""
    _, loss_tok, kl, low, high, d_h, d_w, d_b = torch.ops.g2rpo_fast.fused_linear_g2rpo_loss(
        hidden, weight, bias, ids, coef, advantages, old_logps, ref_logps, temperature, beta, epsilon_low,
        epsilon_high, delta, need_hidden, need_weight, need_bias)
    return loss_tok.sum(), kl, low, high, d_h, d_w, d_b


@linear_token_loss.register_fake
def _linear_token_loss_fake(hidden, weight, bias, ids, coef, advantages, old_logps, ref_logps, temperature, beta,
                            epsilon_low, epsilon_high, delta, need_hidden, need_weight, need_bias):
    n = hidden.shape[0]
    return (hidden.new_empty((), dtype=_F32), _rows(hidden, n), _rows(hidden, n), _rows(hidden, n),
            *_linear_grads_fake(hidden, weight, bias, need_hidden, need_weight, need_bias))


def _linear_token_loss_setup(ctx, inputs, output):
    ctx.save_for_backward(*output[4:])
    ctx.has_bias = inputs[2] is not None


def _linear_token_loss_grad(ctx, grad_loss, *unused):
    need = ctx.needs_input_grad[:3]
    grads = ctx.saved_tensors
    scaled = [g * grad_loss.to(g.dtype) if (wanted and grad_loss is not None) else None
              for g, wanted in zip(grads, (need[0], need[1], need[2] and ctx.has_bias))]
    return (*scaled, *(None,) * 13)


linear_token_loss.register_autograd(_linear_token_loss_grad, setup_context=_linear_token_loss_setup)


def native_available() -> bool:
    """Whether the CPU kernels of these ops exist (`g2rpo_fast._C` built)."""
    return _native.AVAILABLE
