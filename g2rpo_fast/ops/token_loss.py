"""The per-token G²RPO loss (DESIGN.md section 4): clipped surrogate plus k3 KL.

- `token_terms`: the reference (the spec): from log-probs and their log-ratio to the old
  policy, the per-token loss `L_t`, the KL `kl_t` and the clip indicators;
- `fused_token_loss`: the same at token level straight from logits, through the Triton kernel
  `kernels/triton/token_loss.py`, already weighted and summed: `Σ_t c_t·L_t` with the aggregation
  coefficients `c_t` of `g2rpo_fast.loss.aggregation`; `FusedTokenLoss` is its autograd Function.

The kernel reads each logits row once and returns per-token `c_t·L_t` and `c_t·dL_t/dlogp_t`;
the loss is the (deterministic) torch sum of the former. On the native path (CPU, `_C` built) the
same computation is the custom op `torch.ops.g2rpo_fast.token_loss` (`ops/library.py`); its
in-place backward goes through `FusedTokenLoss` on the C++ launchers. The backward reads each row once more
and writes its gradient: `dlogits = grad_out · c_t·dL_t/dlogp_t · (onehot - softmax(x/T)) / T`.
`opts` is anything with `beta`, `epsilon_low`, `epsilon_high`, `delta` (and `temperature` for the
fused path): a `g2rpo_fast.loss.LossOptions`.
"""
from __future__ import annotations

import torch

from .logps import can_write_in_place, kernel_logits, logps_launchers


def token_terms(logps, log_ratio, adv_tok, weights, ref_logps, opts):
    """Per-token `(L_t, kl_t | None, low_t, high_t)`, before weighting (all `[N]`).

    `log_ratio` is log ρ (token level: logp - old_logp; GSPO: the sequence's mean broadcast);
    tokens of weight 0 may carry any finite placeholder in `ref_logps`: they are kept out of exp().
    """
    ratio = torch.exp(log_ratio)
    unclipped = ratio if opts.delta is None else torch.clamp(ratio, max=opts.delta)
    clipped = torch.clamp(ratio, 1 - opts.epsilon_low, 1 + opts.epsilon_high)
    loss = -torch.minimum(unclipped * adv_tok, clipped * adv_tok)
    kl = None
    if ref_logps is not None:
        d = torch.where(weights > 0, ref_logps.to(logps.dtype) - logps, 0.0)
        kl = torch.exp(d) - d - 1
        if opts.beta != 0:
            loss = loss + opts.beta * kl
    low = ((ratio < 1 - opts.epsilon_low) & (adv_tok < 0)).to(logps.dtype)
    high = ((ratio > 1 + opts.epsilon_high) & (adv_tok > 0)).to(logps.dtype)
    return loss, kl, low, high


class FusedTokenLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, ids, coef, adv_tok, old, ref, opts, inplace_backward, native=False):
        if native:
            from g2rpo_fast._native import launch_g2rpo_loss_fwd
        else:
            from g2rpo_fast.kernels.token_loss import launch_g2rpo_loss_fwd
        ctx.native = native
        x = kernel_logits(logits)
        _, rowmax, logsum, loss_tok, dlogp, kl, low, high = launch_g2rpo_loss_fwd(
            x, ids, coef, adv_tok, old, ref, inv_t=1.0 / opts.temperature, beta=opts.beta,
            eps_low=opts.epsilon_low, eps_high=opts.epsilon_high, delta=opts.delta)
        ctx.save_for_backward(x, ids, dlogp, rowmax, logsum)
        ctx.temperature = opts.temperature
        ctx.logits_shape = logits.shape
        ctx.inplace = can_write_in_place(x, logits, inplace_backward)
        ctx.mark_non_differentiable(kl, low, high)
        return loss_tok.sum(), kl, low, high

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        _, launch_logps_bwd = logps_launchers(ctx.native)
        x, ids, dlogp, rowmax, logsum = ctx.saved_tensors
        g = dlogp * (grad_loss.to(torch.float32) / ctx.temperature)
        dx = launch_logps_bwd(x, ids, g, rowmax, logsum, 1.0 / ctx.temperature, out=x if ctx.inplace else None)
        return dx.view(ctx.logits_shape), None, None, None, None, None, None, None, None


def fused_token_loss(logits, token_ids, coef, adv_tok, old_logps, ref_logps, opts, *, inplace_backward=False,
                     native=False):
    """`(Σ_t c_t·L_t, kl, low, high)` at token level from logits `[N, V]` or `[B, T, V]`
    (fp32/bf16/fp16; strided views such as TRL's `logits[:, :-1]` are read in place); the other
    inputs are flat `[N]` (inputs already validated).

    `inplace_backward=True` writes the logits gradient into the logits buffer (see `ops.logps`).
    `native=True` runs the C++ kernels (CPU tensors), else the Triton ones.
    """
    f32 = torch.float32
    as_f32 = lambda t: None if t is None else t.to(f32).contiguous()
    ids = token_ids.reshape(-1).contiguous()
    if (native or (logits.is_cuda and torch.compiler.is_compiling())) and not inplace_backward:
        from . import library

        ids = ids.long()
        loss_tok, _, _, _, kl, low, high = library.token_loss(
            kernel_logits(logits), ids, as_f32(coef), as_f32(adv_tok), as_f32(old_logps), as_f32(ref_logps),
            1.0 / float(opts.temperature), float(opts.beta), float(opts.epsilon_low), float(opts.epsilon_high),
            None if opts.delta is None else float(opts.delta))
        return loss_tok.sum(), kl, low, high
    return FusedTokenLoss.apply(logits, ids, as_f32(coef), as_f32(adv_tok), as_f32(old_logps), as_f32(ref_logps),
                                opts, inplace_backward, native)
