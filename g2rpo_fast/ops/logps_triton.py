"""Autograd wrapper of the Triton log-prob kernels (`kernels/logps.py`).

Called by `ops.logps.per_token_logps` after validation, for CUDA tensors or under
TRITON_INTERPRET=1. Memory: the forward saves the logits (a reference, not a copy) plus 8
bytes per row; the backward writes one `[N, V]` gradient in the logits' dtype, or, with
`inplace_backward=True`, writes it into the logits buffer itself (saves N·V·itemsize bytes;
only valid when nothing reads those logits after the backward, e.g. they are an activation
that is freed right after).
"""
from __future__ import annotations

import torch

from .reference import per_token_logps_ref


def kernel_logits(logits: torch.Tensor) -> torch.Tensor:
    """[N, V] or [B, T, V] with a unit last stride; other strides are read in place, so
    TRL's `logits[:, :-1]` costs no copy."""
    return logits if logits.stride(-1) == 1 else logits.contiguous()


def can_write_in_place(x: torch.Tensor, logits: torch.Tensor, requested: bool) -> bool:
    return bool(requested) and x is logits and logits.is_contiguous()


class _PerTokenLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, token_ids, temperature, with_entropy, inplace_backward):
        from g2rpo_fast.kernels.logps import launch_logps_fwd

        x = kernel_logits(logits)
        ids = token_ids.reshape(-1).contiguous()
        logp, rowmax, logsum, entropy = launch_logps_fwd(x, ids, 1.0 / temperature, with_entropy)
        ctx.save_for_backward(x, ids, rowmax, logsum)
        ctx.temperature = temperature
        ctx.logits_shape = logits.shape
        ctx.inplace = can_write_in_place(x, logits, inplace_backward)
        shape = logits.shape[:-1]
        if entropy is None:
            return logp.view(shape)
        entropy = entropy.view(shape)
        ctx.mark_non_differentiable(entropy)
        return logp.view(shape), entropy

    @staticmethod
    def backward(ctx, grad_logp, *unused):
        from g2rpo_fast.kernels.logps import launch_logps_bwd

        x, ids, rowmax, logsum = ctx.saved_tensors
        if grad_logp is None:
            return None, None, None, None, None
        g = grad_logp.reshape(-1).to(torch.float32) / ctx.temperature
        dx = launch_logps_bwd(x, ids, g, rowmax, logsum, 1.0 / ctx.temperature, out=x if ctx.inplace else None)
        return dx.view(ctx.logits_shape), None, None, None, None


def per_token_logps_triton(logits, token_ids, temperature=1.0, return_entropy=False, *, inplace_backward=False):
    """Same contract as `ops.per_token_logps` (inputs already validated).

    float64 logits (a test/debug dtype, never a training one) take the reference path.
    """
    if logits.dtype == torch.float64:
        out = per_token_logps_ref(logits, token_ids, temperature, return_entropy)
        return (out[0], out[1].detach()) if return_entropy else out
    return _PerTokenLogps.apply(logits, token_ids, float(temperature), bool(return_entropy), inplace_backward)
