"""Triton kernel: decode attention read straight from a paged KV cache (no gather copy).

One query token per sequence. One program per (sequence, KV head) handles that head's whole
query group (GQA): it walks the sequence's block table `BLOCK_N` keys at a time, loads those
keys and values in place from their cache blocks, and keeps an online softmax in fp32
(running max `m`, running sum `l`, output accumulator `acc`). So a decode step reads each
cached K/V element once and writes nothing but the output — the per-step gather of every
sequence's context into a padded copy (what the PyTorch path does) never happens.

The group is padded to 16 rows so both products are `tl.dot`s (tensor cores; fp32 caches use
IEEE fp32, not TF32; the probabilities enter the second product in the values' dtype, as in
flash-attn). The cache may have any strides with a unit head-dim stride, so the
engine's head-major layout and flash-attn's block-major one are both read in place.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import launch, on_gpu

MIN_DOT = 16  # tl.dot needs every dimension >= 16


@triton.jit
def paged_decode_kernel(
    q_ptr, stride_qb, stride_qh,
    k_ptr, v_ptr, stride_cb, stride_cs, stride_ch,
    out_ptr, stride_ob, stride_oh,
    tables_ptr, stride_tb, ctx_lens_ptr, scale,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    ctx = tl.load(ctx_lens_ptr + seq)
    rows = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, D_PAD)
    row_ok = rows < GROUP
    dim_ok = dims < HEAD_DIM
    q_heads = kv_head * GROUP + rows
    q = tl.load(q_ptr + seq.to(tl.int64) * stride_qb + q_heads[:, None] * stride_qh + dims[None, :],
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    if DOT_F32:  # the interpreter multiplies bf16 bit patterns in tl.dot (triton 3.9)
        q = q.to(tl.float32)
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_sum = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, D_PAD], tl.float32)
    keys = tl.arange(0, BLOCK_N)
    table = tables_ptr + seq.to(tl.int64) * stride_tb
    for start in range(0, ctx, BLOCK_N):
        pos = start + keys
        key_ok = pos < ctx
        block = tl.load(table + pos // BLOCK_SIZE, mask=key_ok, other=0).to(tl.int64)
        offs = block * stride_cb + (pos % BLOCK_SIZE).to(tl.int64) * stride_cs + kv_head.to(tl.int64) * stride_ch
        kv_mask = key_ok[:, None] & dim_ok[None, :]
        k = tl.load(k_ptr + offs[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        if DOT_F32:
            k = k.to(tl.float32)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(key_ok[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        l_sum = l_sum * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + offs[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        if DOT_F32:
            v = v.to(tl.float32)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m = m_new
    out = acc / l_sum[:, None]
    tl.store(out_ptr + seq.to(tl.int64) * stride_ob + q_heads[:, None] * stride_oh + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])


def block_n_for(dtype: torch.dtype, device: torch.device) -> int:
    """Keys per tile: 64 on a GPU (any block size works: a tile may span or split blocks), 32
    for fp32 (IEEE fp32 dots at 64 keys spill registers at head dim 128); 128 in the
    interpreter (fewer, larger numpy steps)."""
    if not on_gpu(device):
        return 128
    return 32 if dtype == torch.float32 else 64


def launch_paged_decode(q, k_cache, v_cache, block_tables, ctx_lens, scale):
    """q [B, Hq, D]; caches [num_blocks, block_size, Hkv, D] (any strides, unit last stride);
    block_tables [B, max_blocks] int32; ctx_lens [B] int32 (>= 1) -> out [B, Hq, D] in q's dtype."""
    batch, num_q_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_q_heads // num_kv_heads
    out = torch.empty_like(q)
    if batch == 0:
        return out
    dev = q.device
    launch(
        paged_decode_kernel, (batch, num_kv_heads), dev,
        q, q.stride(0), q.stride(1),
        k_cache, v_cache, k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        out, out.stride(0), out.stride(1),
        block_tables, block_tables.stride(0), ctx_lens, float(scale),
        GROUP=group, GROUP_PAD=max(MIN_DOT, triton.next_power_of_2(group)), HEAD_DIM=head_dim,
        D_PAD=max(MIN_DOT, triton.next_power_of_2(head_dim)), BLOCK_SIZE=block_size,
        BLOCK_N=block_n_for(q.dtype, dev), IEEE=q.dtype == torch.float32,
        DOT_F32=not on_gpu(dev), num_warps=4,
    )
    return out
