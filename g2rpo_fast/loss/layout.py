"""Padded and packed layouts reduced to one flat form.

Every loss works on flat per-token tensors `[N]` plus `seq_idx [N]` (which completion each
token belongs to). Padded `[B, T]` inputs flatten to N = B·T with `seq_idx = row`; packed
inputs `[N]` carry `cu_seqlens [S+1]`. Both layouts then give the same loss and gradients.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from g2rpo_fast.ops.checks import check_cu_seqlens, tracing


@dataclass
class Layout:
    seq_idx: torch.Tensor  # [N] int64
    num_seqs: int
    token_shape: tuple  # shape of per-token tensors as the caller gave them
    max_len: int | torch.Tensor  # T when padded; the longest completion when packed (a 0-d tensor under compile)
    packed: bool


def make_layout(token_shape, device, cu_seqlens=None) -> Layout:
    if cu_seqlens is None:
        if len(token_shape) != 2:
            raise ValueError(
                f"`token_ids` must be [B, T] (padded) or [N] with `cu_seqlens` (packed), "
                f"got shape {tuple(token_shape)}"
            )
        b, t = token_shape
        seq_idx = torch.arange(b, device=device).repeat_interleave(t)
        return Layout(seq_idx, b, tuple(token_shape), t, packed=False)
    if len(token_shape) != 1:
        raise ValueError(
            f"`cu_seqlens` describes a packed layout, so `token_ids` must be 1-D [N], "
            f"got shape {tuple(token_shape)}"
        )
    n = token_shape[0]
    check_cu_seqlens(cu_seqlens, n)
    if cu_seqlens.device != device:
        raise ValueError(f"`cu_seqlens` is on {cu_seqlens.device} but the inputs are on {device}")
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    s = lengths.numel()
    seq_idx = torch.arange(s, device=device).repeat_interleave(lengths, output_size=n)
    max_len = (lengths.max() if tracing() else int(lengths.max())) if s else 0
    return Layout(seq_idx, s, (n,), max_len, packed=True)


def segment_sum(values: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Σ over the tokens of each sequence: [N] -> [S] (differentiable)."""
    out = values.new_zeros(layout.num_seqs)
    return out.index_add(0, layout.seq_idx, values)
