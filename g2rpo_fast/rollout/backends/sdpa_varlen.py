"""Varlen causal attention with `F.scaled_dot_product_attention`: the SDPA and CPU backends'
`varlen` (the packed training forward where no varlen kernel runs: the CPU, an fp32 model
on CUDA, a GPU older than sm80).

The packed row's sequences are grouped by length (`VarlenBatches`): each group is one padded
SDPA call, with a causal mask (bottom-right when a sequence has fewer queries than keys, as a
prefix-shared completion does) that also hides the padding. So a layer makes a few SDPA calls,
not one per sequence, and a group's padding costs at most `1 / MIN_FILL**2` times its exact
attention work (the attention of a packed row stays Σ L_i², never (Σ L_i)²).

The grouping is built once per forward from the host's lengths (`cu_seqlens.tolist()`: one host
sync) and reused by every layer: it is remembered for the `cu_seqlens` tensors it was built
from (the same objects reach every layer of a forward; kept alive while remembered, so their
identity cannot be reused).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MIN_FILL = 0.8  # a group's shortest sequence has at least this share of its longest one's keys


@dataclass
class VarlenBatches:
    """Padded groups of a packed row: per group, the packed row of each (sequence, query) and
    (sequence, key) cell [n, Lq] / [n, Lk] (padding: row 0), the mask [n, 1, Lq, Lk] (None: all
    sequences square, plain causal), and where each packed query's output lies in the groups'
    concatenated outputs."""

    groups: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
    out_index: torch.Tensor


def varlen_batches(lens_q: list[int], lens_k: list[int], device) -> VarlenBatches:
    start_q = [0]
    start_k = [0]
    for a, b in zip(lens_q, lens_k):
        start_q.append(start_q[-1] + a)
        start_k.append(start_k[-1] + b)
    order = sorted((i for i in range(len(lens_q)) if lens_q[i]), key=lambda i: -lens_k[i])
    groups, placed, cells = [], torch.zeros(start_q[-1], dtype=torch.long), 0
    while order:
        longest = lens_k[order[0]]
        members = [i for i in order if lens_k[i] >= MIN_FILL * longest]
        order = order[len(members):]
        width_q, width_k = max(lens_q[i] for i in members), longest
        q_index = torch.zeros(len(members), width_q, dtype=torch.long)
        k_index = torch.zeros(len(members), width_k, dtype=torch.long)
        mask = torch.zeros(len(members), width_q, width_k, dtype=torch.bool)
        square = all(lens_q[i] == lens_k[i] == width_k for i in members)
        for row, i in enumerate(members):
            nq, nk = lens_q[i], lens_k[i]
            q_index[row, :nq] = torch.arange(start_q[i], start_q[i] + nq)
            k_index[row, :nk] = torch.arange(start_k[i], start_k[i] + nk)
            # query j sits at key position nk - nq + j and sees keys 0 .. nk - nq + j
            mask[row, :nq, :nk] = torch.ones(nq, nk, dtype=torch.bool).tril(nk - nq)
            mask[row, nq:, 0] = True  # padded queries see one key: no empty softmax row (no NaN)
            placed[start_q[i]:start_q[i] + nq] = torch.arange(cells + row * width_q, cells + row * width_q + nq)
        cells += len(members) * width_q
        groups.append((q_index.to(device), k_index.to(device), None if square else mask[:, None].to(device)))
    return VarlenBatches(groups, placed.to(device))


_REMEMBERED: list = [None, None, None]  # cu_seqlens_q, cu_seqlens_k, their VarlenBatches


def batches_for(cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor) -> VarlenBatches:
    """The groups of this forward (built at its first layer, reused by the others)."""
    q_ref, k_ref, batches = _REMEMBERED
    if q_ref is cu_seqlens_q and k_ref is cu_seqlens_k:
        return batches
    lens_q = torch.diff(cu_seqlens_q).tolist()
    lens_k = lens_q if cu_seqlens_k is cu_seqlens_q else torch.diff(cu_seqlens_k).tolist()
    batches = varlen_batches(lens_q, lens_k, cu_seqlens_q.device)
    _REMEMBERED[:] = [cu_seqlens_q, cu_seqlens_k, batches]
    return batches


def sdpa_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, scale: float):
    """Causal attention within each packed sequence (see the module docstring): q [Tq, Hq, D],
    k/v [Tk, Hkv, D] -> [Tq, Hq, D]. Differentiable (gathers and SDPA)."""
    batches = batches_for(cu_seqlens_q, cu_seqlens_k)
    num_q_heads, head_dim = q.shape[1], v.shape[2]
    groups = num_q_heads // k.shape[1]
    outs = []
    for q_index, k_index, mask in batches.groups:
        qi = q[q_index].transpose(1, 2)  # [n, Hq, Lq, D]
        ki, vi = k[k_index].transpose(1, 2), v[k_index].transpose(1, 2)
        if groups > 1:  # SDPA's fused CPU/CUDA kernels take equal head counts
            ki, vi = ki.repeat_interleave(groups, dim=1), vi.repeat_interleave(groups, dim=1)
        if mask is None:
            out = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale)
        else:
            out = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=scale)
        outs.append(out.transpose(1, 2).reshape(-1, num_q_heads, head_dim))
    if not outs:
        return q.new_empty(q.shape[0], num_q_heads, head_dim)
    return torch.cat(outs).index_select(0, batches.out_index)
