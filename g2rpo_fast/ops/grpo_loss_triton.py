"""The token-level G²RPO loss from logits, fused in Triton (`kernels/grpo_loss.py`).

Called by `G2RPOLoss.forward` for CUDA tensors (or under TRITON_INTERPRET=1) when
`importance_sampling_level == "token"`; must equal `grpo_loss.g2rpo_loss_from_logps` applied
to `per_token_logps(logits)` in value, gradient and metrics.

Split of the work: the aggregation coefficient `c_t` of every token (DESIGN.md section 6)
depends only on the masks and the layout, so it is O(N) torch here. The kernel reads each
logits row once and returns per-token `c_t·L_t` and `c_t·dL_t/dlogp_t`; the loss is the
(deterministic) torch sum of the former. The backward reads each row once more and writes
its gradient: `dlogits = grad_out · c_t·dL_t/dlogp_t · (onehot - softmax(x/T)) / T`.
"""
from __future__ import annotations

import torch

from .grpo_loss import LossOptions, g2rpo_loss_from_logps
from .layout import segment_sum
from .logps import can_write_in_place, kernel_logits, per_token_logps_ref
from .loss_inputs import LossInputs


def aggregation_coefficients(weights, layout, opts: LossOptions, num_items_in_batch=None):
    """c_t with loss = Σ_t c_t·L_t; mirrors `grpo_loss.aggregate` term by term."""
    if opts.loss_type == "grpo":
        per_seq = segment_sum(weights, layout).clamp(min=1.0) * max(layout.num_seqs, 1)
        return weights / per_seq[layout.seq_idx]
    if opts.loss_type == "bnpo" or (opts.loss_type == "dapo" and num_items_in_batch is None):
        return weights / weights.sum().clamp(min=1.0)
    if opts.loss_type == "dapo":
        return weights / max(float(num_items_in_batch), 1.0)
    max_len = opts.max_completion_length or layout.max_len  # dr_grpo
    return weights / max(layout.num_seqs * max_len, 1)


class _FusedG2RPOLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, ids, coef, adv_tok, old, ref, opts: LossOptions, inplace_backward):
        from g2rpo_fast.kernels.grpo_loss import launch_g2rpo_loss_fwd

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
        from g2rpo_fast.kernels.logps import launch_logps_bwd

        x, ids, dlogp, rowmax, logsum = ctx.saved_tensors
        g = dlogp * (grad_loss.to(torch.float32) / ctx.temperature)
        dx = launch_logps_bwd(x, ids, g, rowmax, logsum, 1.0 / ctx.temperature, out=x if ctx.inplace else None)
        return dx.view(ctx.logits_shape), None, None, None, None, None, None, None


def _weighted_mean(x, weights, total):
    return (x * weights).sum() / total


def fused_g2rpo_loss(logits, inp: LossInputs, opts: LossOptions, num_items_in_batch=None, *,
                     inplace_backward=False):
    """(loss, metrics) for logits `[N, V]` or `[B, T, V]` (strided views read in place);
    inputs already validated by `prepare_loss_inputs`.

    `inplace_backward=True` writes the logits gradient into the logits buffer (see
    `ops.logps_triton`). float64 logits and sequence-level IS take the reference path.
    """
    if opts.beta != 0 and inp.ref_logps is None:
        raise ValueError("`ref_logps` is required when `beta` != 0 (the KL term needs it)")
    if logits.dtype == torch.float64 or opts.importance_sampling_level != "token":
        logps = per_token_logps_ref(logits.reshape(-1, logits.shape[-1]), inp.token_ids, opts.temperature)
        return g2rpo_loss_from_logps(logps, inp.advantages, inp.weights, inp.layout, opts,
                                     inp.old_logps, inp.ref_logps, num_items_in_batch)
    f32 = torch.float32
    weights = inp.weights.to(f32)
    coef = aggregation_coefficients(weights, inp.layout, opts, num_items_in_batch).contiguous()
    adv_tok = inp.advantages.to(f32)[inp.layout.seq_idx].contiguous()
    old = None if inp.old_logps is None else inp.old_logps.to(f32).contiguous()
    ref = None if inp.ref_logps is None else inp.ref_logps.to(f32).contiguous()
    ids = inp.token_ids.reshape(-1).contiguous()
    loss, kl, low, high = _FusedG2RPOLoss.apply(logits, ids, coef, adv_tok, old, ref, opts, inplace_backward)
    with torch.no_grad():
        total = weights.sum().clamp(min=1.0)
        metrics = {
            "kl": _weighted_mean(kl, weights, total) if ref is not None else loss.new_zeros(()),
            "clip_ratio_low": _weighted_mean(low, weights, total),
            "clip_ratio_high": _weighted_mean(high, weights, total),
            "clip_ratio": _weighted_mean(low + high, weights, total),  # low and high never both hold
        }
    return loss, {k: v.detach() for k, v in metrics.items()}
