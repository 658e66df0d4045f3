"""How per-token losses add up to the loss (DESIGN.md sections 5-6): the rule, written once.

Token weights: `w_t = completion_mask_t`, times `1 - guidance_mask_t` with `guidance_loss="mask"`
(injected guidance tokens are context, not policy output).

Every loss type is a weighted sum `loss = Σ_t c_t·L_t` with these coefficients (S sequences):

| loss_type | c_t | what it is |
| --- | --- | --- |
| grpo | w_t / (S · max(1, Σ_{u in seq(t)} w_u)) | mean over sequences of each sequence's token mean |
| bnpo | w_t / max(1, Σ_u w_u) | mean over the batch's tokens |
| dapo | w_t / max(1, num_items_in_batch) | over the step's token count (all micro-batches, ranks); else bnpo |
| dr_grpo | w_t / (S · max_completion_length) | over a fixed budget of tokens per sequence |

A sequence with Σ w = 0 adds nothing and never a NaN. The PyTorch path (`loss/objective.py`)
and the fused kernel (`ops/token_loss.py`) both consume `coefficients`; the trainer counts
dapo's `num_items_in_batch` with `num_items`.
"""
from __future__ import annotations

import torch

from .layout import Layout, segment_sum


def token_weights(completion_mask, guidance_mask, guidance_loss: str, like: torch.Tensor) -> torch.Tensor:
    """w = completion_mask (all ones when None), times (1 - guidance_mask) when guidance tokens
    are context only; in `like`'s dtype and shape."""
    w = torch.ones_like(like) if completion_mask is None else completion_mask.to(like.dtype)
    if guidance_mask is not None and guidance_loss == "mask":
        w = w * (1 - guidance_mask.to(like.dtype))
    return w


def coefficients(weights: torch.Tensor, layout: Layout, opts, num_items_in_batch=None) -> torch.Tensor:
    """c_t `[N]` of the table above (`opts`: a `LossOptions`)."""
    if opts.loss_type == "grpo":
        per_seq = segment_sum(weights, layout).clamp(min=1.0) * max(layout.num_seqs, 1)
        return weights / per_seq[layout.seq_idx]
    if opts.loss_type == "bnpo" or (opts.loss_type == "dapo" and num_items_in_batch is None):
        return weights / weights.sum().clamp(min=1.0)
    if opts.loss_type == "dapo":
        return weights / max(float(num_items_in_batch), 1.0)
    max_len = opts.max_completion_length or layout.max_len  # dr_grpo
    if isinstance(max_len, torch.Tensor):  # packed, under torch.compile: no host sync
        return weights / (layout.num_seqs * max_len).clamp(min=1).to(weights.dtype)
    return weights / max(layout.num_seqs * max_len, 1)


def num_items(completion_mask: torch.Tensor, guidance_mask, guidance_loss: str) -> float:
    """Σ_t w_t of one batch: dapo's `num_items_in_batch` is this summed over a step's batches."""
    like = completion_mask.to(torch.float32)
    return float(token_weights(completion_mask, guidance_mask, guidance_loss, like).sum())


def piece_scale(loss_type: str, piece: tuple[int, float, int], whole: tuple[int, float, int],
                num_items_in_batch=None) -> float:
    """The factor that makes a piece's loss its share of the whole batch's loss, when a batch
    is trained in pieces of whole sequences (`max_tokens_per_microbatch`): each piece is
    normalised as a batch of its own (the table above), so it is rescaled by its normaliser
    over the whole one. `piece` / `whole`: (sequences S, Σ w, max_len of dr_grpo's
    normaliser). grpo: S_k / S; bnpo (and dapo without a global count): max(1, Σw_k) /
    max(1, Σw); dapo with `num_items_in_batch`: 1 (both are normalised by that count);
    dr_grpo: S_k·len_k / (S·len)."""
    (s_k, w_k, len_k), (s, w, length) = piece, whole
    if loss_type == "grpo":
        return s_k / max(s, 1)
    if loss_type == "bnpo" or (loss_type == "dapo" and num_items_in_batch is None):
        return max(w_k, 1.0) / max(w, 1.0)
    if loss_type == "dapo":
        return 1.0
    return max(s_k * len_k, 1) / max(s * length, 1)
