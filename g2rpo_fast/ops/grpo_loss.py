"""The G²RPO objective on per-token log-probs (DESIGN.md sections 4-6): the reference.

Everything here is O(N) elementwise work on flat `[N]` tensors; the expensive part (log-probs
from logits or from hidden states) is elsewhere. `G2RPOLoss` and `FusedLinearG2RPOLoss` both
end here, so the two modules share one definition of the objective.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_choice
from .layout import Layout, segment_sum

LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
IS_LEVELS = ("token", "sequence")
GUIDANCE_LOSS = ("mask", "include")
SCALE_REWARDS = ("group", "batch", "none")


@dataclass(frozen=True)
class LossOptions:
    beta: float = 0.0
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    delta: float | None = None
    loss_type: str = "grpo"
    importance_sampling_level: str = "token"
    max_completion_length: int | None = None
    temperature: float = 1.0
    guidance_loss: str = "mask"
    scale_rewards: str = "group"

    def __post_init__(self):
        check_choice(self.loss_type, "loss_type", LOSS_TYPES)
        check_choice(self.importance_sampling_level, "importance_sampling_level", IS_LEVELS)
        check_choice(self.guidance_loss, "guidance_loss", GUIDANCE_LOSS)
        check_choice(self.scale_rewards, "scale_rewards", SCALE_REWARDS)
        for name in ("beta", "epsilon_low", "epsilon_high"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"`{name}` must be a non-negative number, got {v!r}")
        if self.delta is not None and not (isinstance(self.delta, (int, float)) and self.delta > 1):
            raise ValueError(f"`delta` must be None or a number > 1, got {self.delta!r}")
        if self.max_completion_length is not None and self.max_completion_length < 1:
            raise ValueError(f"`max_completion_length` must be >= 1, got {self.max_completion_length}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"`temperature` must be a positive number, got {self.temperature!r}")


def token_weights(completion_mask, guidance_mask, guidance_loss, like):
    """w = completion_mask, times (1 - guidance_mask) when guidance tokens are context only."""
    w = torch.ones_like(like) if completion_mask is None else completion_mask.to(like.dtype)
    if guidance_mask is not None and guidance_loss == "mask":
        w = w * (1 - guidance_mask.to(like.dtype))
    return w


def log_ratio(logps, old_logps, weights, layout: Layout, level: str):
    """log ρ per token; `sequence` level uses the length-normalised sequence ratio (GSPO)."""
    old = logps.detach() if old_logps is None else old_logps.to(logps.dtype)
    # Weight-0 tokens (padding, masked guidance) may carry any finite placeholder in old/ref
    # log-probs; keep them out of exp() so inf * 0 can never turn into a NaN loss or gradient.
    lr = torch.where(weights > 0, logps - old, 0.0)
    if level == "sequence":
        seq = segment_sum(lr * weights, layout) / segment_sum(weights, layout).clamp(min=1.0)
        lr = seq[layout.seq_idx]
    return lr


def per_token_terms(logps, advantages_tok, weights, layout, opts: LossOptions, old_logps, ref_logps):
    """Per-token loss L_t and the clip indicators (before weighting)."""
    ratio = torch.exp(log_ratio(logps, old_logps, weights, layout, opts.importance_sampling_level))
    unclipped = ratio if opts.delta is None else torch.clamp(ratio, max=opts.delta)
    clipped = torch.clamp(ratio, 1 - opts.epsilon_low, 1 + opts.epsilon_high)
    loss = -torch.minimum(unclipped * advantages_tok, clipped * advantages_tok)
    kl = None
    if ref_logps is not None:
        d = torch.where(weights > 0, ref_logps.to(logps.dtype) - logps, 0.0)
        kl = torch.exp(d) - d - 1
        if opts.beta != 0:
            loss = loss + opts.beta * kl
    low = (ratio < 1 - opts.epsilon_low) & (advantages_tok < 0)
    high = (ratio > 1 + opts.epsilon_high) & (advantages_tok > 0)
    return loss, kl, low, high


def aggregate(per_token, weights, layout: Layout, opts: LossOptions, num_items_in_batch=None):
    """DESIGN.md section 6. A sequence with Σw = 0 contributes 0 and never a NaN."""
    weighted = per_token * weights
    if opts.loss_type == "grpo":
        seq = segment_sum(weighted, layout) / segment_sum(weights, layout).clamp(min=1.0)
        return seq.sum() / max(layout.num_seqs, 1)
    if opts.loss_type == "bnpo" or (opts.loss_type == "dapo" and num_items_in_batch is None):
        return weighted.sum() / weights.sum().clamp(min=1.0)
    if opts.loss_type == "dapo":
        return weighted.sum() / max(float(num_items_in_batch), 1.0)
    max_len = opts.max_completion_length or layout.max_len  # dr_grpo
    return weighted.sum() / max(layout.num_seqs * max_len, 1)


def masked_mean(x, weights):
    return (x.to(weights.dtype) * weights).sum() / weights.sum().clamp(min=1.0)


def g2rpo_loss_from_logps(logps, advantages, weights, layout, opts, old_logps=None, ref_logps=None,
                          num_items_in_batch=None):
    """Loss and metrics from flat log-probs `[N]`, per-sequence advantages `[S]`, weights `[N]`."""
    if opts.beta != 0 and ref_logps is None:
        raise ValueError("`ref_logps` is required when `beta` != 0 (the KL term needs it)")
    adv_tok = advantages.to(logps.dtype)[layout.seq_idx]
    per_token, kl, low, high = per_token_terms(logps, adv_tok, weights, layout, opts, old_logps, ref_logps)
    loss = aggregate(per_token, weights, layout, opts, num_items_in_batch)
    with torch.no_grad():
        metrics = {
            "kl": masked_mean(kl, weights) if kl is not None else logps.new_zeros(()),
            "clip_ratio_low": masked_mean(low, weights),
            "clip_ratio_high": masked_mean(high, weights),
            "clip_ratio": masked_mean(low | high, weights),
        }
    return loss, {k: v.detach() for k, v in metrics.items()}
