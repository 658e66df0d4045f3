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

The gather paths have no Python loop at all: index tensors built once per step (in
`AttentionMetadata`) serve every layer.
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
    key_slots: torch.Tensor | None = None  # [B, max_k] flat cache slot of each key
    mask: torch.Tensor | None = None  # [B, max_q, max_k] True where attention is allowed
    valid: torch.Tensor | None = None  # [B, max_q] True for real (non-padding) queries

    def build_gather_index(self) -> None:
        dev = self.q_lens.device
        q_lens, ctx = self.q_lens.long(), self.ctx_lens.long()
        cu = self.cu_seqlens_q.long()
        ar_q = torch.arange(self.max_q, device=dev)
        ar_k = torch.arange(self.max_k, device=dev)
        self.valid = ar_q[None, :] < q_lens[:, None]
        self.q_index = torch.minimum(cu[:-1, None] + ar_q[None, :], (cu[1:] - 1)[:, None])
        block_idx = (ar_k // self.block_size).clamp(max=self.block_tables.shape[1] - 1)
        self.key_slots = (self.block_tables.long()[:, block_idx] * self.block_size
                          + (ar_k % self.block_size)[None, :])
        # query i of a sequence sits at position ctx - q_len + i; padded queries reuse the
        # last real position so no row of the mask is empty
        q_pos = torch.minimum((ctx - q_lens)[:, None] + ar_q[None, :], (ctx - 1)[:, None])
        self.mask = ar_k[None, None, :] <= q_pos[:, :, None]


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write the new tokens' K/V ([T, Hkv, D]) into their cache slots."""
    k_cache.view(-1, *k.shape[1:]).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, *v.shape[1:]).index_copy_(0, slot_mapping, v)


def _gather_attention(q, k_cache, v_cache, meta: AttentionMetadata, scale: float, use_sdpa: bool):
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[-2]
    qp = q[meta.q_index].transpose(1, 2)  # [B, Hq, max_q, D]
    kp = k_cache.view(-1, num_kv_heads, head_dim)[meta.key_slots].transpose(1, 2)  # [B, Hkv, max_k, D]
    vp = v_cache.view(-1, num_kv_heads, head_dim)[meta.key_slots].transpose(1, 2)
    b, _, max_q, _ = qp.shape
    if use_sdpa:
        out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=meta.mask[:, None], scale=scale,
                                             enable_gqa=num_q_heads != num_kv_heads)
    else:
        groups = num_q_heads // num_kv_heads
        # query head h reads kv head h // groups (HF's repeat_kv), without materialising repeats
        qg = qp.reshape(b, num_kv_heads, groups * max_q, head_dim)
        scores = torch.matmul(qg, kp.transpose(-1, -2)) * scale
        scores = scores.view(b, num_kv_heads, groups, max_q, -1)
        scores = scores.masked_fill(~meta.mask[:, None, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs.view(b, num_kv_heads, groups * max_q, -1), vp)
        out = out.view(b, num_q_heads, max_q, head_dim)
    return out.transpose(1, 2)[meta.valid]  # back to packed [T, Hq, D]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
           v_cache: torch.Tensor, meta: AttentionMetadata, scale: float, backend: str) -> torch.Tensor:
    """Causal attention of the packed queries q [T, Hq, D] over each sequence's cached context.

    k, v are this step's new keys/values (already written to the cache by `store_kv`);
    k_cache/v_cache are [num_blocks, block_size, Hkv, D].
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


def needs_gather_index(backend: str, meta: AttentionMetadata) -> bool:
    if backend == "flash_attn":
        return False
    if backend == "torch_varlen":
        return not (meta.is_prefill and not meta.has_cached)
    return True
