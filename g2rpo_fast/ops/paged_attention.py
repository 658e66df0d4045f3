"""Decode attention over a paged KV cache: one query token per sequence.

`paged_decode_attention(q, k_cache, v_cache, block_tables, ctx_lens, scale)`:
query head `h` of sequence `b` attends (no mask needed: every cached key precedes the query)
to the first `ctx_lens[b]` keys of KV head `h // (Hq / Hkv)` (GQA), read through the
sequence's block table: key `j` lives in block `block_tables[b, j // block_size]`, slot
`j % block_size`. The caches are `[num_blocks, block_size, Hkv, D]` with any strides and a
unit last stride, so a permuted view of a head-major cache is read in place.

CUDA tensors (or CPU under TRITON_INTERPRET=1) run `kernels/triton/paged_attention.py`, which
reads each key and value where it lies; otherwise `paged_decode_attention_gathered` gathers
every sequence's block table at once (static shapes, no host sync) and runs the reference's
eager math: scores in the inputs' dtype, softmax in fp32. The reference (the spec) gathers each
sequence's own keys in a Python loop.
"""
from __future__ import annotations

import torch

from .backend import use_triton
from .checks import check_same_device, check_tensor

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def paged_decode_attention_ref(q, k_cache, v_cache, block_tables, ctx_lens, scale):
    """The spec: per sequence, gather its keys/values, then matmul, fp32 softmax, matmul."""
    num_q_heads, block_size, num_kv_heads = q.shape[1], k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    out = torch.empty_like(q)
    for b, ctx in enumerate(ctx_lens.tolist()):
        pos = torch.arange(ctx, device=q.device)
        blocks = block_tables[b].long()[pos // block_size]
        k = k_cache[blocks, pos % block_size]  # [ctx, Hkv, D]
        v = v_cache[blocks, pos % block_size]
        qg = q[b].view(num_kv_heads, group, -1)  # query head h -> kv head h // group
        scores = torch.matmul(qg, k.permute(1, 2, 0)) * scale  # [Hkv, group, ctx]
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out[b] = torch.matmul(probs, v.transpose(0, 1)).reshape(num_q_heads, -1)
    return out


def check_paged_inputs(q, k_cache, v_cache, block_tables, ctx_lens):
    check_tensor(q, "q", floating=True, ndim=3)
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_tensor(cache, name, floating=True, ndim=4)
        if cache.dtype != q.dtype:
            raise ValueError(f"`{name}` has dtype {cache.dtype} but `q` has {q.dtype}")
        if cache.stride(-1) != 1:
            raise ValueError(f"`{name}` must have a unit stride along the head dimension")
    check_tensor(block_tables, "block_tables", integer=True, ndim=2)
    check_tensor(ctx_lens, "ctx_lens", integer=True, ndim=1)
    check_same_device(q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables, ctx_lens=ctx_lens)
    if q.dtype not in _DTYPES:
        raise ValueError(f"`q` must be float32, bfloat16 or float16, got {q.dtype}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"`v_cache` has shape {tuple(v_cache.shape)}, `k_cache` {tuple(k_cache.shape)}")
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    if q.shape[2] != head_dim or q.shape[1] % num_kv_heads:
        raise ValueError(f"`q` has shape {tuple(q.shape)}: its head dim must be {head_dim} and its head "
                         f"count a multiple of the cache's {num_kv_heads} KV heads")
    if block_tables.shape[0] != q.shape[0] or ctx_lens.shape[0] != q.shape[0]:
        raise ValueError(f"`block_tables` and `ctx_lens` need one row per query ({q.shape[0]})")


def paged_decode_attention(q, k_cache, v_cache, block_tables, ctx_lens, scale: float):
    """Decode attention of q [B, Hq, D] over each sequence's paged context -> [B, Hq, D].

    `ctx_lens[b] >= 1` keys of sequence b (this step's key included) are read through
    `block_tables[b]` (int32). See the module docstring for the layout.
    """
    check_paged_inputs(q, k_cache, v_cache, block_tables, ctx_lens)
    return compute_paged_decode_attention(q, k_cache, v_cache, block_tables, ctx_lens, scale)


def paged_decode_attention_gathered(q, k_cache, v_cache, block_tables, ctx_lens, scale):
    """The PyTorch path without a host sync: every sequence's whole block table is gathered
    ([B, width·block_size] keys, a static shape) and the keys past its context masked, then the
    reference's math (matmul, fp32 softmax, matmul). Capturable and compilable; the copy is of
    the table's width, so this is for the CPU and for checking, not for long contexts on a GPU."""
    batch, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    blocks = block_tables.long()
    keys = blocks.shape[1] * block_size
    k = k_cache[blocks].reshape(batch, keys, num_kv_heads, head_dim).permute(0, 2, 3, 1)  # [B, Hkv, D, keys]
    v = v_cache[blocks].reshape(batch, keys, num_kv_heads, head_dim).transpose(1, 2)  # [B, Hkv, keys, D]
    qg = q.view(batch, num_kv_heads, group, head_dim)
    scores = torch.matmul(qg, k) * scale  # [B, Hkv, group, keys]
    in_context = torch.arange(keys, device=q.device)[None, :] < ctx_lens.long()[:, None]
    scores = scores.masked_fill(~in_context[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v).reshape(batch, num_q_heads, head_dim)


def compute_paged_decode_attention(q, k_cache, v_cache, block_tables, ctx_lens, scale: float):
    """`paged_decode_attention` without the checks (the engine's per-layer call): the Triton
    kernel, else the gathering PyTorch path (no host sync)."""
    if use_triton(q):
        from ..kernels.paged_attention import launch_paged_decode

        return launch_paged_decode(q.contiguous(), k_cache, v_cache, block_tables.to(torch.int32).contiguous(),
                                   ctx_lens.to(torch.int32).contiguous(), scale)
    return paged_decode_attention_gathered(q, k_cache, v_cache, block_tables, ctx_lens, scale)
