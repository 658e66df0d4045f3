"""CPU stand-ins for the CUDA-only attention kernels, so their backends' code runs in CI.

Each stand-in has the real function's signature and refuses what the real kernel refuses
(fp32 inputs; for torch's varlen before 2.12, fewer K/V heads than query heads), and computes
causal attention with a plain per-sequence loop written here, independently of g2rpo_fast:
fp32 math, output in the input dtype. Only the innermost kernel differs from a GPU run.
"""
from __future__ import annotations

import math
import types

import torch

HALF = (torch.float16, torch.bfloat16)


def _check_half(*tensors):
    for t in tensors:
        if t.dtype not in HALF:
            raise RuntimeError("FlashAttention only supports fp16 and bf16 data type")  # the real message


def causal_attention(q, k, v, scale, causal=True):
    """q [Lq, Hq, D], k/v [Lk, Hkv, D]; query i sits at key position Lk - Lq + i; query head h
    reads KV head h // (Hq / Hkv)."""
    lq, hq, _ = q.shape
    lk, hkv, _ = k.shape
    rep = hq // hkv
    acc = torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 for a float64 reference
    kf = k.to(acc).repeat_interleave(rep, dim=1)
    vf = v.to(acc).repeat_interleave(rep, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.to(acc), kf) * scale
    if causal:
        allowed = torch.arange(lk)[None, :] <= (torch.arange(lq)[:, None] + lk - lq)
        scores = scores.masked_fill(~allowed, float("-inf"))
    out = torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), vf)
    return out.to(q.dtype)


def _packed(q, k, v, cu_q, cu_k, scale, causal=True):
    outs = []
    bq, bk = cu_q.tolist(), cu_k.tolist()
    for i in range(len(bq) - 1):
        outs.append(causal_attention(q[bq[i]:bq[i + 1]], k[bk[i]:bk[i + 1]], v[bk[i]:bk[i + 1]], scale, causal))
    return torch.cat(outs)


def make_flash_attn(calls: list | None = None):
    """A stand-in `flash_attn` module with `flash_attn_varlen_func` (bottom-right causal when a
    sequence has fewer queries than keys, as flash-attn >= 2.1). `calls`, when given, gets the
    (query rows, key rows) of every call."""

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False, block_table=None, **unused):
        _check_half(q, k, v)
        if block_table is not None:
            raise NotImplementedError("stand-in: the paged (block_table) prefill is not used by g2rpo_fast")
        lens_q, lens_k = torch.diff(cu_seqlens_q).tolist(), torch.diff(cu_seqlens_k).tolist()
        if max(lens_q) != max_seqlen_q or max(lens_k) != max_seqlen_k:
            raise RuntimeError("stand-in: max_seqlen_q/max_seqlen_k do not match cu_seqlens")
        if calls is not None:
            calls.append((q.shape[0], k.shape[0]))
        scale = softmax_scale if softmax_scale is not None else 1 / math.sqrt(q.shape[-1])
        return _packed(q, k, v, cu_seqlens_q, cu_seqlens_k, scale, causal)

    return types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func)


def pretend_cuda(monkeypatch, capability=(9, 0)):
    """Answer torch's CUDA capability queries on a machine without CUDA: `capability` for every
    device, or a dict {device index: capability} (index None = the current device, 0)."""
    import torch.cuda

    table = capability if isinstance(capability, dict) else None

    def get_device_capability(device=None):
        if table is None:
            return capability
        index = torch.device(device).index if device is not None else None
        return table[0 if index is None else index]

    monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)


def _varlen_checked(query, key, value, cu_seq_q, cu_seq_k, scale, causal, gqa_allowed):
    _check_half(query, key, value)
    if key.shape[1] != query.shape[1] and not gqa_allowed:
        raise RuntimeError("varlen_attn: number of heads in key/value must equal query's")
    return _packed(query, key, value, cu_seq_q, cu_seq_k, scale, causal)


def varlen_attn_torch_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """torch 2.9 / 2.10: `is_causal`, fixed 1/sqrt(D) scale, no GQA."""
    return _varlen_checked(query, key, value, cu_seq_q, cu_seq_k, 1 / math.sqrt(query.shape[-1]), is_causal, False)


def varlen_attn_torch_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                           window_size=(-1, -1)):
    """torch 2.11: `scale`, `window_size` ((-1, 0) = causal), no GQA."""
    if window_size not in ((-1, -1), (-1, 0)):
        raise NotImplementedError("stand-in: only full or causal windows")
    scale = scale if scale is not None else 1 / math.sqrt(query.shape[-1])
    return _varlen_checked(query, key, value, cu_seq_q, cu_seq_k, scale, window_size == (-1, 0), False)


def varlen_attn_torch_2_12(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                           window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None,
                           num_splits=None):
    """torch 2.12+: also `enable_gqa` (and paged arguments, not used by g2rpo_fast)."""
    if window_size not in ((-1, -1), (-1, 0)):
        raise NotImplementedError("stand-in: only full or causal windows")
    scale = scale if scale is not None else 1 / math.sqrt(query.shape[-1])
    return _varlen_checked(query, key, value, cu_seq_q, cu_seq_k, scale, window_size == (-1, 0), enable_gqa)


VARLEN_SIGNATURES = {"2.10": varlen_attn_torch_2_10, "2.11": varlen_attn_torch_2_11, "2.12": varlen_attn_torch_2_12}
