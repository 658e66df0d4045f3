"""Packed forward of Llama / Qwen2 / Qwen3 over a paged KV cache.

The forward calls the HF model's own submodules (embedding, projections, q/k norms, MLP,
RMSNorms, rotary embedding, lm_head), so it reads the live parameters, follows HF's math
exactly (biases, tied embeddings, rope scaling, GQA) and caches no derived weight: after an
optimizer step the next `generate` already uses the new weights.
"""
from __future__ import annotations

import itertools

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
        elem = self.dtype.itemsize
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
    def _prepare(self, seqs: list[Sequence], is_prefill: bool, width: int | None = None):
        """The step's inputs and `StepMetadata`, built from Python lists and moved to the device
        in one copy (one int64 buffer, pinned on CUDA, sliced there). `width`: the block-table
        width (default: the longest table of the step)."""
        bs = self.block_size
        if is_prefill:
            starts = [s.num_cached_tokens for s in seqs]
            input_ids = [t for s, st in zip(seqs, starts) for t in s.token_ids[st:]]
        else:
            starts = [len(s) - 1 for s in seqs]
            input_ids = [s.token_ids[-1] for s in seqs]
        ctx = [len(s) for s in seqs]
        q_lens = [c - st for c, st in zip(ctx, starts)]
        width = width or max(len(s.block_table) for s in seqs)
        positions = [p for st, c in zip(starts, ctx) for p in range(st, c)]
        slots = [s.block_table[p // bs] * bs + p % bs for s, st, c in zip(seqs, starts, ctx) for p in range(st, c)]
        tables = [t for s in seqs for t in s.block_table + [0] * (width - len(s.block_table))]
        cu_q = [0, *itertools.accumulate(q_lens)]
        cu_k = [0, *itertools.accumulate(ctx)]
        logits_index = [c - 1 for c in cu_q[1:]] if is_prefill else []  # last computed token of each sequence
        seeds = [s.seed for s in seqs]
        counters = [s.num_completion_tokens for s in seqs]  # tokens generated so far: the Philox offset
        parts = [input_ids, positions, slots, q_lens, ctx, cu_q, cu_k, tables, logits_index, seeds, counters]
        host = torch.tensor([x for part in parts for x in part], dtype=torch.long)
        dev = self.device
        if dev.type == "cuda":
            host = host.pin_memory()
        flat = host.to(dev, non_blocking=True)
        (ids_t, pos_t, slots_t, q_lens_t, ctx_t, cu_q_t, cu_k_t, tables_t, index_t, seeds_t,
         counters_t) = flat.split([len(part) for part in parts])
        meta = StepMetadata(
            is_prefill=is_prefill, has_cached=is_prefill and any(starts), block_size=bs, scale=self.scale,
            q_lens=q_lens_t.int(), ctx_lens=ctx_t.int(), cu_seqlens_q=cu_q_t.int(), cu_seqlens_k=cu_k_t.int(),
            max_q=max(q_lens), max_k=max(ctx), slot_mapping=slots_t, block_tables=tables_t.view(len(seqs), width).int(),
            q_lens_host=tuple(q_lens), ctx_lens_host=tuple(ctx), seeds=seeds_t, counters=counters_t)
        self.backend.prepare(meta, seqs, self.k_cache, self.v_cache)
        return ids_t, pos_t, meta, (index_t if is_prefill else None)

    # ---- forward ------------------------------------------------------------------------
    def run(self, seqs: list[Sequence], is_prefill: bool) -> tuple[torch.Tensor, StepMetadata]:
        """Run one step; returns fp32 logits [len(seqs), vocab] at each sequence's last token, and
        the step's metadata (its `seeds` / `counters` feed the sampler). Called inside the
        engine's grad-free (and, for 16-bit compute over fp32 weights, autocast) context."""
        input_ids, positions, meta, logits_index = self._prepare(seqs, is_prefill)
        return self.forward(input_ids, positions, meta, logits_index), meta

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: StepMetadata,
                logits_index: torch.Tensor | None = None) -> torch.Tensor:
        """The model over the step's tokens; tensors only (a decode step's forward makes no host
        sync and no data-dependent branch, so it can be captured or compiled)."""
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
