"""`cpu`: the engine's CPU path — HF's eager math, and decode from a dense K/V buffer.

Prefill gathers each sequence's K/V from the paged cache and runs matmul + fp32 softmax +
matmul (HF's eager attention, so greedy output equals HF `generate` token for token). Decode
reads the dense, incrementally appended K/V of `DecodeBuffer` (each group's shared prompt
prefix kept once): the copy out of the paged blocks happens when the batch changes, not every
step. When the buffer would be too large, decode gathers from the paged cache instead.
"""
from __future__ import annotations

import torch

from ..decode_buffer import DecodeBuffer, DecodeStep
from .base import AttentionBackend
from .gather import build_gather_index, gather_attention
from .sdpa_varlen import sdpa_varlen


class CpuDenseBackend(AttentionBackend):
    name = "cpu"

    def __init__(self):
        self.buffer: DecodeBuffer | None = None  # sized from the first cache it sees

    def reset(self) -> None:
        if self.buffer is not None:
            self.buffer.reset()

    def prepare(self, meta, seqs, k_cache, v_cache) -> None:
        num_layers, num_kv_heads, _, block_size, head_dim = k_cache.shape
        buf = self.buffer
        if buf is None or (buf.num_layers, buf.num_kv_heads, buf.head_dim, buf.block_size, buf.dtype,
                           buf.device) != (num_layers, num_kv_heads, head_dim, block_size, k_cache.dtype,
                                           k_cache.device):
            self.buffer = DecodeBuffer(num_layers, num_kv_heads, head_dim, block_size, k_cache.dtype,
                                       k_cache.device)
        if meta.is_prefill:  # their rows (if any, e.g. after a preemption) lack this prefill's K/V
            for s in seqs:
                self.buffer.row_of.pop(s.seq_id, None)
        else:
            meta.extra = self.buffer.step(seqs, k_cache, v_cache)
        if meta.extra is None:
            meta.extra = build_gather_index(meta)

    def attend(self, q, k, v, k_cache, v_cache, meta, layer):
        self.store_kv(k, v, k_cache, v_cache, meta)  # the paged cache stays the source of truth
        step = meta.extra
        if not isinstance(step, DecodeStep):
            return gather_attention(q, k_cache, v_cache, step, meta.scale, use_sdpa=False)
        buf = self.buffer
        num_kv_heads, head_dim = k.shape[1], k.shape[2]
        k_buf, v_buf = buf.k[layer], buf.v[layer]
        k_buf.view(num_kv_heads, -1, head_dim).index_copy_(1, step.dense_slots, k.transpose(0, 1))
        v_buf.view(num_kv_heads, -1, head_dim).index_copy_(1, step.dense_slots, v.transpose(0, 1))
        prefix = (None, None) if buf.k_prefix is None else (buf.k_prefix[layer], buf.v_prefix[layer])
        return dense_decode_attention(q, k_buf, v_buf, *prefix, step, meta.scale)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, scale):
        return sdpa_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, scale)


def dense_decode_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                           k_prefix: torch.Tensor | None, v_prefix: torch.Tensor | None, step: DecodeStep,
                           scale: float) -> torch.Tensor:
    """Decode attention of q [B, Hq, D] (one query per sequence) over one `DecodeBuffer` layer.

    k_buf/v_buf [Hkv, R, capacity, D] per-row keys; k_prefix/v_prefix [Hkv, groups, P, D] the
    shared prefix of each group (or None). The scores of the prefix and suffix keys go through
    one softmax (HF's eager math: matmul, fp32 softmax, matmul); only the probability-weighted
    sum over values is split in two.
    """
    num_rows = k_buf.shape[1]
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_buf.shape[0]
    groups = num_q_heads // num_kv_heads
    prefix_keys = step.prefix_keys
    keys = step.key_mask.shape[-1] - prefix_keys
    if step.rows is not None:  # rows of finished sequences get a dummy query, dropped below
        q = q.new_zeros(num_rows, num_q_heads, head_dim).index_copy_(0, step.rows, q)
    # query head h reads kv head h // groups (HF's repeat_kv): the group becomes the query dim
    qg = q.view(num_rows, num_kv_heads, groups, head_dim).transpose(0, 1)  # [Hkv, R, G, D]
    ks, vs = k_buf[:, :, :keys], v_buf[:, :, :keys]
    scores = torch.matmul(qg, ks.transpose(-1, -2))  # [Hkv, R, G, keys]
    if prefix_keys:
        # all queries of a group against its prefix at once: [Hkv, groups, max_group * G, P]
        num_groups, slots = k_prefix.shape[1], step.slot_rows.shape[0]
        qp = qg.index_select(1, step.slot_rows).reshape(num_kv_heads, num_groups, -1, head_dim)
        prefix_scores = torch.matmul(qp, k_prefix.transpose(-1, -2))
        prefix_scores = prefix_scores.view(num_kv_heads, slots, groups, prefix_keys).index_select(1, step.row_slots)
        scores = torch.cat([prefix_scores, scores], dim=-1)
    scores = scores * scale
    scores.masked_fill_(~step.key_mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(qg.dtype)
    if prefix_keys:
        out = torch.matmul(probs[..., prefix_keys:], vs)
        pp = probs[..., :prefix_keys].index_select(1, step.slot_rows)
        prefix_out = torch.matmul(pp.reshape(num_kv_heads, num_groups, -1, prefix_keys), v_prefix)
        out += prefix_out.view(num_kv_heads, slots, groups, head_dim).index_select(1, step.row_slots)
    else:
        out = torch.matmul(probs, vs)
    out = out.transpose(0, 1).reshape(num_rows, num_q_heads, head_dim)
    return out if step.rows is None else out.index_select(0, step.rows)
