"""Attention over a paged KV cache, with interchangeable backends.

Backends (``attn_backend``):

- ``flash_attn``: the optional `flash-attn` package on CUDA; `flash_attn_varlen_func` for
  packed prefill (with the block table when some prompt tokens come from shared blocks) and
  `flash_attn_with_kvcache` for decode. Its paged KV needs a block size that is a multiple
  of 256.
- ``torch_varlen``: `torch.nn.attention.varlen.varlen_attn` (CUDA only) for packed prefill
  without cache hits; other steps use the SDPA path.
- ``sdpa``: K/V of each sequence gathered from its blocks into a padded batch, then
  `F.scaled_dot_product_attention` with a boolean causal mask.
- ``cpu``: the same gather, then plain matmul + fp32 softmax (the math of HF's eager path).

The gather paths build their index tensors once per step (`AttentionMetadata`) for all
layers. Decode runs as one padded batch; prefill too when padding at most doubles the
attention work, else it loops over sequences (not tokens), since padding mixed-length
prompts to the longest would waste most of the attention work.

On a CPU model (``cpu``, and ``sdpa`` too) decode does not gather at all: it reads the dense,
incrementally appended K/V of `decode_buffer.DecodeBuffer` with `dense_decode_attention`
(the eager matmul math, with each group's shared prompt prefix read once for the group).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "flash_attn", "torch_varlen", "sdpa", "cpu")


def _has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _has_torch_varlen() -> bool:
    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def resolve_backend(name: str, device: torch.device) -> str:
    if name not in BACKENDS:
        raise ValueError(f"attn_backend must be one of {BACKENDS}, got {name!r}")
    cuda = device.type == "cuda"
    if name == "auto":
        if not cuda:
            return "cpu"
        if _has_flash_attn():
            return "flash_attn"
        return "torch_varlen" if _has_torch_varlen() else "sdpa"
    if name in ("flash_attn", "torch_varlen") and not cuda:
        raise ValueError(f"attn_backend={name!r} needs a CUDA model")
    if name == "flash_attn" and not _has_flash_attn():
        raise ValueError("attn_backend='flash_attn' but the flash_attn package is not installed")
    if name == "torch_varlen" and not _has_torch_varlen():
        raise ValueError("attn_backend='torch_varlen' but this torch has no varlen_attn")
    return name


@dataclass
class AttentionMetadata:
    """Per-step description of the packed batch (all tensors on the model's device)."""

    is_prefill: bool
    has_cached: bool  # some prompt tokens of this prefill come from shared blocks
    block_size: int
    q_lens: torch.Tensor  # [B] tokens computed this step per sequence
    ctx_lens: torch.Tensor  # [B] tokens in the cache per sequence after this step
    cu_seqlens_q: torch.Tensor  # [B+1] int32
    cu_seqlens_k: torch.Tensor  # [B+1] int32
    max_q: int
    max_k: int
    slot_mapping: torch.Tensor  # [T] flat cache slot of each computed token
    block_tables: torch.Tensor  # [B, max_blocks] int32
    # padded-gather helpers, built only for the gather backends
    q_index: torch.Tensor | None = None  # [B, max_q] packed row of each padded query
    gather_blocks: torch.Tensor | None = None  # [B, max_blocks] long block table
    mask: torch.Tensor | None = None  # [B, max_q, max_blocks * block_size] True where allowed
    valid: torch.Tensor | None = None  # [B, max_q] True for real (non-padding) queries
    # prefill: per-sequence (query rows, block ids, causal mask [q_len, keys]); padding the
    # queries of a mixed-length prefill batch would waste most of the attention FLOPs
    per_seq: list | None = None

    def build_gather_index(self) -> None:
        if self.is_prefill and not self._padding_is_cheap():
            self._build_per_seq()
            return
        dev = self.q_lens.device
        q_lens, ctx = self.q_lens.long(), self.ctx_lens.long()
        cu = self.cu_seqlens_q.long()
        ar_q = torch.arange(self.max_q, device=dev)
        ar_k = torch.arange(self.block_tables.shape[1] * self.block_size, device=dev)
        self.valid = ar_q[None, :] < q_lens[:, None]
        self.q_index = torch.minimum(cu[:-1, None] + ar_q[None, :], (cu[1:] - 1)[:, None])
        self.gather_blocks = self.block_tables.long()
        # query i of a sequence sits at position ctx - q_len + i; padded queries reuse the
        # last real position so no row of the mask is empty
        q_pos = torch.minimum((ctx - q_lens)[:, None] + ar_q[None, :], (ctx - 1)[:, None])
        self.mask = ar_k[None, None, :] <= q_pos[:, :, None]


    def _padding_is_cheap(self) -> bool:
        """Whether one padded batch does at most twice the attention work of the exact one
        (many short, similar prompts: one batched call beats a Python loop over sequences)."""
        q_lens, ctx = self.q_lens.tolist(), self.ctx_lens.tolist()
        padded = len(q_lens) * self.max_q * self.block_tables.shape[1] * self.block_size
        return padded <= 2 * sum(q * c for q, c in zip(q_lens, ctx))

    def _build_per_seq(self) -> None:
        self.per_seq = []
        bounds = self.cu_seqlens_q.tolist()
        for b, (q_len, ctx) in enumerate(zip(self.q_lens.tolist(), self.ctx_lens.tolist())):
            num_blocks = (ctx + self.block_size - 1) // self.block_size
            blocks = self.block_tables[b, :num_blocks].long()
            keys = num_blocks * self.block_size
            # query i (position ctx - q_len + i) sees keys 0 .. ctx - q_len + i
            mask = torch.ones(q_len, keys, dtype=torch.bool, device=blocks.device).tril(ctx - q_len)
            self.per_seq.append((bounds[b], bounds[b + 1], blocks, mask))


def cache_shape(backend: str, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int):
    """Per-layer KV cache shape: flash-attn's paged layout, or head-major for the gather paths
    (a gather then yields [Hkv, B, keys, D], ready for batched matmul without a transpose copy)."""
    if backend == "flash_attn":
        return (num_blocks, block_size, num_kv_heads, head_dim)
    return (num_kv_heads, num_blocks, block_size, head_dim)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor, backend: str) -> None:
    """Write the new tokens' K/V ([T, Hkv, D]) into their cache slots."""
    if backend == "flash_attn":
        k_cache.view(-1, *k.shape[1:]).index_copy_(0, slot_mapping, k)
        v_cache.view(-1, *v.shape[1:]).index_copy_(0, slot_mapping, v)
    else:
        num_kv_heads, head_dim = k.shape[1], k.shape[2]
        k_cache.view(num_kv_heads, -1, head_dim).index_copy_(1, slot_mapping, k.transpose(0, 1))
        v_cache.view(num_kv_heads, -1, head_dim).index_copy_(1, slot_mapping, v.transpose(0, 1))


def _grouped_attention(qg, kp, vp, mask, scale: float, use_sdpa: bool):
    """qg [..., Hkv, G*q, D] over kp/vp [..., Hkv, keys, D] with a bool mask [..., G*q, keys]."""
    if use_sdpa:
        return F.scaled_dot_product_attention(qg, kp, vp, attn_mask=mask, scale=scale)
    scores = torch.matmul(qg, kp.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(qg.dtype)
    return torch.matmul(probs, vp)


def _gather_attention(q, k_cache, v_cache, meta: AttentionMetadata, scale: float, use_sdpa: bool):
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
    if meta.per_seq is not None:
        outs = []
        for start, end, blocks, mask in meta.per_seq:
            q_len = end - start
            qg = q[start:end].view(q_len, num_kv_heads, groups, head_dim)
            qg = qg.permute(1, 2, 0, 3).reshape(num_kv_heads, groups * q_len, head_dim)
            kp = gather(k_rows, blocks).view(num_kv_heads, -1, head_dim)
            vp = gather(v_rows, blocks).view(num_kv_heads, -1, head_dim)
            out = _grouped_attention(qg, kp, vp, mask.repeat(groups, 1), scale, use_sdpa)
            outs.append(out.view(num_kv_heads, groups, q_len, head_dim).permute(2, 0, 1, 3))
        return torch.cat(outs).reshape(-1, num_q_heads, head_dim)
    b, max_q = meta.q_index.shape
    flat_blocks = meta.gather_blocks.view(-1)
    kp = gather(k_rows, flat_blocks).view(num_kv_heads, b, -1, head_dim)  # [Hkv, B, keys, D]
    vp = gather(v_rows, flat_blocks).view(num_kv_heads, b, -1, head_dim)
    qg = q[meta.q_index].view(b, max_q, num_kv_heads, groups, head_dim)
    qg = qg.permute(2, 0, 3, 1, 4).reshape(num_kv_heads, b, groups * max_q, head_dim)
    mask = meta.mask[:, None].expand(b, groups, max_q, -1).reshape(b, groups * max_q, -1)
    out = _grouped_attention(qg, kp, vp, mask, scale, use_sdpa)  # [Hkv, B, groups * max_q, D]
    out = out.view(num_kv_heads, b, groups, max_q, head_dim).permute(1, 3, 0, 2, 4)
    return out.reshape(b, max_q, num_q_heads, head_dim)[meta.valid]  # back to packed [T, Hq, D]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
           v_cache: torch.Tensor, meta: AttentionMetadata, scale: float, backend: str) -> torch.Tensor:
    """Causal attention of the packed queries q [T, Hq, D] over each sequence's cached context.

    k, v are this step's new keys/values (already written to the cache by `store_kv`);
    k_cache/v_cache are one layer's cache, laid out as `cache_shape` says.
    """
    if backend == "flash_attn":
        from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache  # optional dependency

        if meta.is_prefill:
            use_cache = meta.has_cached
            return flash_attn_varlen_func(
                q, k_cache if use_cache else k, v_cache if use_cache else v,
                cu_seqlens_q=meta.cu_seqlens_q, cu_seqlens_k=meta.cu_seqlens_k,
                max_seqlen_q=meta.max_q, max_seqlen_k=meta.max_k, softmax_scale=scale, causal=True,
                block_table=meta.block_tables if use_cache else None)
        out = flash_attn_with_kvcache(q.unsqueeze(1), k_cache, v_cache, cache_seqlens=meta.ctx_lens,
                                      block_table=meta.block_tables, softmax_scale=scale, causal=True)
        return out.squeeze(1)
    if backend == "torch_varlen" and meta.is_prefill and not meta.has_cached:
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn(q, k, v, meta.cu_seqlens_q, meta.cu_seqlens_k, meta.max_q, meta.max_k,
                           scale=scale, window_size=(-1, 0), enable_gqa=q.shape[1] != k.shape[1])
    return _gather_attention(q, k_cache, v_cache, meta, scale, use_sdpa=backend != "cpu")


def dense_decode_attention(q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                           k_prefix: torch.Tensor | None, v_prefix: torch.Tensor | None, step,
                           scale: float) -> torch.Tensor:
    """Decode attention of q [B, Hq, D] (one query per sequence) over one `DecodeBuffer` layer.

    k_buf/v_buf [Hkv, R, capacity, D] per-row keys; k_prefix/v_prefix [Hkv, groups, P, D] the
    shared prefix of each group (or None); `step` a `DecodeStep`. The scores of the prefix
    and suffix keys go through one softmax (HF's eager math: matmul, fp32 softmax, matmul);
    only the probability-weighted sum over values is split in two.
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


def needs_gather_index(backend: str, meta: AttentionMetadata) -> bool:
    if backend == "flash_attn":
        return False
    if backend == "torch_varlen":
        return not (meta.is_prefill and not meta.has_cached)
    return True
