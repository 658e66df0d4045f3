"""Attention by gathering each sequence's K/V out of the paged cache (the portable path).

Used for prefill by the SDPA and CPU backends (and by torch varlen when some prompt tokens
come from shared blocks). The index tensors are built once per step (`GatherIndex`) for all
layers. Prefill runs as one padded batch when padding at most doubles the attention work
(many short, similar prompts), else as a loop over sequences (not tokens): padding
mixed-length prompts to the longest would waste most of the attention work.

`context_slots` / `gather_context` serve the flash_attn backend instead: they read each
sequence's whole context back from the cache as packed K/V rows for one varlen kernel call.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import StepMetadata


@dataclass
class GatherIndex:
    # padded batch: [B, max_q] packed row of each padded query, [B, max_blocks] block ids,
    # [B, max_q, keys] True where allowed, [B, max_q] True for real queries
    q_index: torch.Tensor | None = None
    blocks: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    # or per sequence: (first row, end row, block ids, causal mask [q_len, keys])
    per_seq: list | None = None


def build_gather_index(meta: StepMetadata) -> GatherIndex:
    if meta.is_prefill and not _padding_is_cheap(meta):
        return GatherIndex(per_seq=_per_seq(meta))
    dev = meta.q_lens.device
    q_lens, ctx = meta.q_lens.long(), meta.ctx_lens.long()
    cu = meta.cu_seqlens_q.long()
    ar_q = torch.arange(meta.max_q, device=dev)
    ar_k = torch.arange(meta.block_tables.shape[1] * meta.block_size, device=dev)
    # query i of a sequence sits at position ctx - q_len + i; padded queries reuse the last
    # real position so no row of the mask is empty
    q_pos = torch.minimum((ctx - q_lens)[:, None] + ar_q[None, :], (ctx - 1)[:, None])
    return GatherIndex(
        q_index=torch.minimum(cu[:-1, None] + ar_q[None, :], (cu[1:] - 1)[:, None]),
        blocks=meta.block_tables.long(),
        mask=ar_k[None, None, :] <= q_pos[:, :, None],
        valid=ar_q[None, :] < q_lens[:, None])


def _padding_is_cheap(meta: StepMetadata) -> bool:
    """Whether one padded batch does at most twice the attention work of the exact one."""
    q_lens, ctx = meta.q_lens_host, meta.ctx_lens_host
    padded = len(q_lens) * meta.max_q * meta.block_tables.shape[1] * meta.block_size
    return padded <= 2 * sum(q * c for q, c in zip(q_lens, ctx))


def _per_seq(meta: StepMetadata) -> list:
    out = []
    bounds = [0, *itertools.accumulate(meta.q_lens_host)]
    for b, (q_len, ctx) in enumerate(zip(meta.q_lens_host, meta.ctx_lens_host)):
        num_blocks = (ctx + meta.block_size - 1) // meta.block_size
        blocks = meta.block_tables[b, :num_blocks].long()
        keys = num_blocks * meta.block_size
        # query i (position ctx - q_len + i) sees keys 0 .. ctx - q_len + i
        mask = torch.ones(q_len, keys, dtype=torch.bool, device=blocks.device).tril(ctx - q_len)
        out.append((bounds[b], bounds[b + 1], blocks, mask))
    return out


def grouped_attention(qg, kp, vp, mask, scale: float, use_sdpa: bool):
    """qg [..., Hkv, G*q, D] over kp/vp [..., Hkv, keys, D] with a bool mask [..., G*q, keys]."""
    if use_sdpa:
        return F.scaled_dot_product_attention(qg, kp, vp, attn_mask=mask, scale=scale)
    scores = torch.matmul(qg, kp.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(qg.dtype)
    return torch.matmul(probs, vp)


def gather_attention(q, k_cache, v_cache, index: GatherIndex, scale: float, use_sdpa: bool):
    """Attention of the packed queries q [T, Hq, D] over a head-major layer cache."""
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[0]
    groups = num_q_heads // num_kv_heads
    num_blocks = k_cache.shape[1]
    # one row per (kv head, block): gathering whole rows along dim 0 is a plain memcpy per
    # row, many times faster on CPU than indexing an inner dimension
    k_rows, v_rows = k_cache.view(num_kv_heads * num_blocks, -1), v_cache.view(num_kv_heads * num_blocks, -1)
    head_offset = torch.arange(num_kv_heads, device=q.device)[:, None] * num_blocks

    def gather(rows: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        return rows.index_select(0, (head_offset + blocks[None]).view(-1))
    # query head h reads kv head h // groups (HF's repeat_kv): fold each group into the rows
    if index.per_seq is not None:
        outs = []
        for start, end, blocks, mask in index.per_seq:
            q_len = end - start
            qg = q[start:end].view(q_len, num_kv_heads, groups, head_dim)
            qg = qg.permute(1, 2, 0, 3).reshape(num_kv_heads, groups * q_len, head_dim)
            kp = gather(k_rows, blocks).view(num_kv_heads, -1, head_dim)
            vp = gather(v_rows, blocks).view(num_kv_heads, -1, head_dim)
            out = grouped_attention(qg, kp, vp, mask.repeat(groups, 1), scale, use_sdpa)
            outs.append(out.view(num_kv_heads, groups, q_len, head_dim).permute(2, 0, 1, 3))
        return torch.cat(outs).reshape(-1, num_q_heads, head_dim)
    b, max_q = index.q_index.shape
    flat_blocks = index.blocks.view(-1)
    kp = gather(k_rows, flat_blocks).view(num_kv_heads, b, -1, head_dim)  # [Hkv, B, keys, D]
    vp = gather(v_rows, flat_blocks).view(num_kv_heads, b, -1, head_dim)
    qg = q[index.q_index].view(b, max_q, num_kv_heads, groups, head_dim)
    qg = qg.permute(2, 0, 3, 1, 4).reshape(num_kv_heads, b, groups * max_q, head_dim)
    mask = index.mask[:, None].expand(b, groups, max_q, -1).reshape(b, groups * max_q, -1)
    out = grouped_attention(qg, kp, vp, mask, scale, use_sdpa)  # [Hkv, B, groups * max_q, D]
    out = out.view(num_kv_heads, b, groups, max_q, head_dim).permute(1, 3, 0, 2, 4)
    return out.reshape(b, max_q, num_q_heads, head_dim)[index.valid]  # back to packed [T, Hq, D]


def context_slots(meta: StepMetadata) -> torch.Tensor:
    """Flat cache slot of every context token of every sequence (positions 0 .. ctx-1, sequence
    after sequence: the key rows of `cu_seqlens_k`), [Σ ctx] int64 on the cache's device."""
    ctx = meta.ctx_lens.long()
    total = sum(meta.ctx_lens_host)
    seq = torch.repeat_interleave(torch.arange(ctx.numel(), device=ctx.device), ctx, output_size=total)
    pos = torch.arange(total, device=ctx.device) - meta.cu_seqlens_k.long()[:-1][seq]
    bs = meta.block_size
    return meta.block_tables.long()[seq, pos // bs] * bs + pos % bs


def gather_context(layer_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """K (or V) of `slots` from a head-major layer cache [Hkv, blocks, block_size, D], as the
    contiguous packed [len(slots), Hkv, D] that varlen kernels take."""
    num_kv_heads, head_dim = layer_cache.shape[0], layer_cache.shape[-1]
    rows = layer_cache.view(num_kv_heads, -1, head_dim).index_select(1, slots)
    return rows.transpose(0, 1).contiguous()
