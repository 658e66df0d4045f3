"""`sdpa`: PyTorch everywhere (any device, any dtype) — the fallback when no varlen kernel fits.

- prefill: each sequence's K/V gathered from its blocks, then `F.scaled_dot_product_attention`
  with a boolean causal mask (see gather.py);
- decode: `ops.paged_decode_attention`, which on CUDA reads K/V in place from the cache blocks
  (a Triton kernel: nothing is copied per step); on the CPU it is the gathering reference;
- training forward (`varlen`): SDPA over the packed row's sequences grouped by length
  (`sdpa_varlen.py`: a few padded calls per layer, the grouping built once per forward).
"""
from __future__ import annotations

from g2rpo_fast.ops.paged_attention import compute_paged_decode_attention

from .base import AttentionBackend
from .gather import build_gather_index, gather_attention
from .sdpa_varlen import sdpa_varlen


class SdpaBackend(AttentionBackend):
    name = "sdpa"
    static_decode = True  # store_kv + the paged decode kernel: tensors only (flash_attn, torch_varlen inherit it)
    use_sdpa = True  # False: the eager math (matmul, fp32 softmax, matmul) of HF's eager path

    def prepare(self, meta, seqs, k_cache, v_cache) -> None:
        if meta.is_prefill:
            meta.extra = build_gather_index(meta)

    def attend(self, q, k, v, k_cache, v_cache, meta, layer):
        self.store_kv(k, v, k_cache, v_cache, meta)
        if meta.is_prefill:
            return gather_attention(q, k_cache, v_cache, meta.extra, meta.scale, self.use_sdpa)
        return compute_paged_decode_attention(q, self.paged_view(k_cache), self.paged_view(v_cache),
                                              meta.block_tables, meta.ctx_lens, meta.scale)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, scale):
        return sdpa_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, scale)
