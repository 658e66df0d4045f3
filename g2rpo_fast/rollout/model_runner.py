"""Packed forward of Llama / Qwen2 / Qwen3 over a paged KV cache.

The forward calls the HF model's own submodules (embedding, projections, q/k norms, MLP,
RMSNorms, rotary embedding, lm_head), so it reads the live parameters, follows HF's math
exactly (biases, tied embeddings, rope scaling, GQA) and caches no derived weight: after an
optimizer step the next `generate` already uses the new weights.
"""
from __future__ import annotations

import torch

from .backends import AttentionBackend, StepMetadata
from .sequence import Sequence

PACKED_FAMILIES = ("llama", "qwen2", "qwen3")


def supports_packed_forward(model) -> bool:
    config = model.config
    if getattr(config, "model_type", None) not in PACKED_FAMILIES:
        return False
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return False  # sliding-window layers: the generic path handles them
    core = getattr(model, "model", None)
    return (core is not None and hasattr(core, "layers") and hasattr(core, "rotary_emb")
            and hasattr(model, "lm_head"))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class ModelRunner:
    """Runs engine steps of one model: builds the step metadata, then per layer the model's own
    projections, norms, RoPE and MLP around a single `backend.attend` call.

    `dtype` is the compute dtype: the KV cache holds it and q/k/v are cast to it; the caller runs
    the step under autocast when the weights are fp32 and `dtype` is 16-bit.
    """

    def __init__(self, model, block_size: int, backend: AttentionBackend, dtype: torch.dtype,
                 lm_head_fp32: bool = False):
        self.model = model
        self.lm_head_fp32 = lm_head_fp32
        self.core = model.model
        config = model.config
        self.block_size = block_size
        self.backend = backend
        self.dtype = dtype
        self.num_layers = len(self.core.layers)
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.scale = self.core.layers[0].self_attn.scaling
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.core.embed_tokens.weight.device

    def bytes_per_block(self) -> int:
        elem = torch.tensor([], dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * elem

    @property
    def num_kv_blocks(self) -> int:
        return 0 if self.k_cache is None else self.backend.num_blocks_of(self.k_cache[0])

    def cache_bytes(self) -> int:
        return 0 if self.k_cache is None else 2 * self.k_cache.numel() * self.k_cache.element_size()

    def allocate_kv_cache(self, num_blocks: int) -> None:
        if self.num_kv_blocks == num_blocks and self.k_cache.dtype == self.dtype:
            return
        self.free_kv_cache()
        shape = (self.num_layers, *self.backend.cache_shape(num_blocks, self.block_size, self.num_kv_heads,
                                                             self.head_dim))
        self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)

    def free_kv_cache(self) -> None:
        self.k_cache = self.v_cache = None
        self.backend.reset()

    def reset_decode_state(self) -> None:
        """Forget per-call backend state (sequence ids restart with every `generate` call)."""
        self.backend.reset()

    # ---- inputs -------------------------------------------------------------------------
    def _prepare(self, seqs: list[Sequence], is_prefill: bool):
        bs = self.block_size
        if is_prefill:
            starts = [s.num_cached_tokens for s in seqs]
            input_ids = [t for s, st in zip(seqs, starts) for t in s.token_ids[st:]]
        else:
            starts = [len(s) - 1 for s in seqs]
            input_ids = [s.token_ids[-1] for s in seqs]
        ctx = [len(s) for s in seqs]
        q_lens = [c - st for c, st in zip(ctx, starts)]
        max_blocks = max(len(s.block_table) for s in seqs)
        block_tables = torch.tensor([s.block_table + [0] * (max_blocks - len(s.block_table)) for s in seqs],
                                    dtype=torch.int32)
        q_lens_t = torch.tensor(q_lens)
        seq_idx = torch.repeat_interleave(torch.arange(len(seqs)), q_lens_t)
        cu_q = torch.zeros(len(seqs) + 1, dtype=torch.int32)
        cu_q[1:] = torch.cumsum(q_lens_t, 0)
        positions = torch.arange(len(input_ids)) - cu_q[:-1].long()[seq_idx] + torch.tensor(starts)[seq_idx]
        slots = block_tables.long()[seq_idx, positions // bs] * bs + positions % bs
        cu_k = torch.zeros(len(seqs) + 1, dtype=torch.int32)
        cu_k[1:] = torch.cumsum(torch.tensor(ctx), 0)
        dev = self.device
        meta = StepMetadata(
            is_prefill=is_prefill, has_cached=is_prefill and any(starts), block_size=bs, scale=self.scale,
            q_lens=q_lens_t.to(dev, torch.int32), ctx_lens=torch.tensor(ctx, dtype=torch.int32, device=dev),
            cu_seqlens_q=cu_q.to(dev), cu_seqlens_k=cu_k.to(dev), max_q=max(q_lens), max_k=max(ctx),
            slot_mapping=slots.to(dev), block_tables=block_tables.to(dev))
        self.backend.prepare(meta, seqs, self.k_cache, self.v_cache)
        logits_index = None
        if is_prefill:
            logits_index = (cu_q[1:] - 1).long().to(dev)  # last computed token of each sequence
        return torch.tensor(input_ids, dtype=torch.long, device=dev), positions.to(dev), meta, logits_index

    # ---- forward ------------------------------------------------------------------------
    def run(self, seqs: list[Sequence], is_prefill: bool) -> torch.Tensor:
        """Run one step; returns fp32 logits [len(seqs), vocab] at each sequence's last token.
        Called inside the engine's grad-free (and, for 16-bit compute over fp32 weights,
        autocast) context."""
        input_ids, positions, meta, logits_index = self._prepare(seqs, is_prefill)
        core, dtype = self.core, self.dtype
        x = core.embed_tokens(input_ids)  # [T, hidden]
        num_tokens = x.shape[0]
        cos, sin = core.rotary_emb(x, positions[None])  # the model's own RoPE (scaling included)
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # [T, 1, D], broadcast over heads
        for i, layer in enumerate(core.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(num_tokens, -1, self.head_dim)
            k = attn.k_proj(h).view(num_tokens, -1, self.head_dim)
            v = attn.v_proj(h).view(num_tokens, -1, self.head_dim)
            if hasattr(attn, "q_norm"):  # Qwen3 normalises each head before RoPE
                q, k = attn.q_norm(q), attn.k_norm(k)
            # RoPE in the dtype the norms give (fp32 under autocast, as HF), then the compute dtype
            q = (q * cos + _rotate_half(q) * sin).to(dtype)
            k = (k * cos + _rotate_half(k) * sin).to(dtype)
            o = self.backend.attend(q, k, v.to(dtype), self.k_cache[i], self.v_cache[i], meta, i)
            x = x + attn.o_proj(o.reshape(num_tokens, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        if logits_index is not None:
            x = x[logits_index]
        x = core.norm(x)
        if self.lm_head_fp32:  # outside autocast: the weights are fp32 masters
            with torch.autocast(x.device.type, enabled=False):
                return self.model.lm_head(x.float()).float()
        return self.model.lm_head(x).float()
