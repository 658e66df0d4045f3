"""`flash_attn`: the flash-attn package (CUDA, fp16/bf16).

- cache: flash-attn's paged layout [blocks, block_size, Hkv, D], block size a multiple of 256;
- prefill: `flash_attn_varlen_func` over this step's K/V, or over the paged cache through the
  block table when some prompt tokens come from shared blocks;
- decode: `flash_attn_with_kvcache` reads the paged cache in place;
- training forward (`varlen`): `flash_attn_varlen_func` (with its backward).
"""
from __future__ import annotations

import importlib.util

from .base import HALF_DTYPES, AttentionBackend


def load_flash_attn():
    """The flash_attn module (a function so tests can substitute a stand-in)."""
    import flash_attn

    return flash_attn


def has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


class FlashAttnBackend(AttentionBackend):
    name = "flash_attn"
    dtypes = HALF_DTYPES
    needs_cuda = True
    block_size_multiple = 256
    default_block_size = 256

    @classmethod
    def missing_dependency(cls):
        return None if has_flash_attn() else "the flash-attn package is not installed"

    def cache_shape(self, num_blocks, block_size, num_kv_heads, head_dim):
        return (num_blocks, block_size, num_kv_heads, head_dim)

    def num_blocks_of(self, layer_cache):
        return layer_cache.shape[0]

    def paged_view(self, layer_cache):
        return layer_cache

    def store_kv(self, k, v, k_cache, v_cache, meta) -> None:
        k_cache.view(-1, *k.shape[1:]).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, *v.shape[1:]).index_copy_(0, meta.slot_mapping, v)

    def attend(self, q, k, v, k_cache, v_cache, meta, layer):
        self.store_kv(k, v, k_cache, v_cache, meta)
        fa = load_flash_attn()
        if meta.is_prefill:
            cached = meta.has_cached
            return fa.flash_attn_varlen_func(
                q, k_cache if cached else k, v_cache if cached else v,
                cu_seqlens_q=meta.cu_seqlens_q, cu_seqlens_k=meta.cu_seqlens_k, max_seqlen_q=meta.max_q,
                max_seqlen_k=meta.max_k, softmax_scale=meta.scale, causal=True,
                block_table=meta.block_tables if cached else None)
        out = fa.flash_attn_with_kvcache(q.unsqueeze(1), k_cache, v_cache, cache_seqlens=meta.ctx_lens,
                                         block_table=meta.block_tables, softmax_scale=meta.scale, causal=True)
        return out.squeeze(1)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, scale):
        return load_flash_attn().flash_attn_varlen_func(
            q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_q,
            max_seqlen_k=max_k, softmax_scale=scale, causal=True)
