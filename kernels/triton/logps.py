"""Triton kernels: per-token log-probs from logits (forward) and their gradient (backward).

Forward reads each logits row once: an online log-sum-exp over vocabulary tiles in fp32
(running max `m`, running `s = Σ exp(x - m)`), plus, optionally, the entropy through
`t = Σ exp(x - m)·(x - m)` (so `H = log s - t / s`, free of the cancellation of `lse - E[x]`
when logits are large). It keeps `m` and `log s` per row (8 bytes) for the backward.

Backward reads each row once and writes it once:
`dlogits = g · (onehot(token) - softmax(x / T))` where the caller has folded `1/T` into `g`.
A row with `g == 0` (a masked token) skips the read and only writes zeros.

Grid: 1-D over rows, capped, each program walks rows with a stride (no 65535 limit; row
offsets in int64 so N·V > 2^31 is fine). The launchers live here (grid and tiles from
`launch.py`); the autograd Function and the reference live in `g2rpo_fast/ops/logps.py`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import block_v_for, launch, num_programs, row_strides, warps_for


@triton.jit
def logps_fwd_kernel(
    logits_ptr, stride_b, stride_t, seq_len, ids_ptr, logp_ptr, rowmax_ptr, logsum_ptr, entropy_ptr,
    n_rows, vocab, inv_t,
    BLOCK_V: tl.constexpr, WITH_ENTROPY: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_V)
    for row in range(pid, n_rows, nprog):
        r64 = tl.cast(row, tl.int64)
        base = logits_ptr + (r64 // seq_len) * stride_b + (r64 % seq_len) * stride_t
        m = tl.max(tl.full([BLOCK_V], float("-inf"), tl.float32), 0)
        s = tl.sum(tl.zeros([BLOCK_V], tl.float32), 0)
        t = tl.sum(tl.zeros([BLOCK_V], tl.float32), 0)
        for start in range(0, vocab, BLOCK_V):
            offs = start + cols
            valid = offs < vocab
            x = tl.load(base + offs, mask=valid, other=float("-inf")).to(tl.float32) * inv_t
            m_new = tl.maximum(m, tl.max(x, 0))
            alpha = tl.exp(m - m_new)
            e = tl.exp(x - m_new)
            if WITH_ENTROPY:
                # re-centre t on the new max; s == 0 only before the first tile (m = -inf)
                t = alpha * (t + tl.where(s > 0, m - m_new, 0.0) * s)
                t += tl.sum(e * tl.where(valid, x - m_new, 0.0), 0)
            s = s * alpha + tl.sum(e, 0)
            m = m_new
        tok = tl.load(ids_ptr + row).to(tl.int64)
        # a bad id (unchecked under torch.compile) reads nothing: NaN, never an illegal access;
        # with TRITON_DEBUG=1 the device assert names it
        tok_ok = (tok >= 0) & (tok < vocab)
        tl.device_assert(tok_ok, "token id outside [0, vocab)")
        x_tok = tl.load(base + tok, mask=tok_ok, other=float("nan")).to(tl.float32) * inv_t
        log_s = tl.log(s)
        tl.store(logp_ptr + row, (x_tok - m) - log_s)
        tl.store(rowmax_ptr + row, m)
        tl.store(logsum_ptr + row, log_s)
        if WITH_ENTROPY:
            tl.store(entropy_ptr + row, log_s - t / s)


@triton.jit
def logps_bwd_kernel(
    logits_ptr, stride_b, stride_t, seq_len, dlogits_ptr, stride_drow, ids_ptr, grad_ptr, rowmax_ptr, logsum_ptr,
    n_rows, vocab, inv_t,
    BLOCK_V: tl.constexpr,
):
    """dlogits[r] = grad[r] · (onehot(ids[r]) - softmax(logits[r] · inv_t)); grad has 1/T folded in.

    `dlogits_ptr` may alias `logits_ptr` (in-place backward): each element is read before it
    is written, by the same program.
    """
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_V)
    for row in range(pid, n_rows, nprog):
        g = tl.load(grad_ptr + row).to(tl.float32)
        r64 = tl.cast(row, tl.int64)
        base = logits_ptr + (r64 // seq_len) * stride_b + (r64 % seq_len) * stride_t
        out = dlogits_ptr + r64 * stride_drow
        tok = tl.load(ids_ptr + row).to(tl.int64)
        shift = tl.load(rowmax_ptr + row)
        log_s = tl.load(logsum_ptr + row)
        for start in range(0, vocab, BLOCK_V):
            offs = start + cols
            valid = offs < vocab
            if g != 0:
                x = tl.load(base + offs, mask=valid, other=0.0).to(tl.float32) * inv_t
                p = tl.exp((x - shift) - log_s)
                d = g * (tl.where(offs == tok, 1.0, 0.0) - p)
                tl.store(out + offs, d.to(dlogits_ptr.dtype.element_ty), mask=valid)
            else:
                tl.store(out + offs, tl.zeros([BLOCK_V], dlogits_ptr.dtype.element_ty), mask=valid)


# --------------------------------------------------------------------------- launchers

def launch_logps_fwd(logits2d, ids, inv_t, with_entropy):
    """logits [N, V] or [B, T, V] (last dim contiguous), ids [N] -> (logp, rowmax, logsum, entropy|None) fp32."""
    vocab = logits2d.shape[-1]
    n = ids.numel()
    dev = logits2d.device
    logp = torch.empty(n, device=dev, dtype=torch.float32)
    rowmax = torch.empty(n, device=dev, dtype=torch.float32)
    logsum = torch.empty(n, device=dev, dtype=torch.float32)
    entropy = torch.empty(n, device=dev, dtype=torch.float32) if with_entropy else logp
    if n:
        bv = block_v_for(vocab, dev)
        launch(
            logps_fwd_kernel, (num_programs(n, dev),), dev, logits2d, *row_strides(logits2d), ids, logp,
            rowmax, logsum, entropy, n, vocab, float(inv_t),
            BLOCK_V=bv, WITH_ENTROPY=with_entropy, num_warps=warps_for(bv, dev),
        )
    return logp, rowmax, logsum, (entropy if with_entropy else None)


def launch_logps_bwd(logits2d, ids, grad_rows, rowmax, logsum, inv_t, out=None):
    """dlogits [N, V] (contiguous) in logits' dtype; `out` may be the logits buffer itself when
    that is contiguous (in-place backward)."""
    vocab = logits2d.shape[-1]
    n = ids.numel()
    dev = logits2d.device
    if out is None:
        out = torch.empty((n, vocab), device=dev, dtype=logits2d.dtype)
    if n:
        bv = block_v_for(vocab, dev)
        launch(
            logps_bwd_kernel, (num_programs(n, dev),), dev, logits2d, *row_strides(logits2d), out, vocab, ids,
            grad_rows.contiguous(), rowmax, logsum, n, vocab, float(inv_t), BLOCK_V=bv, num_warps=warps_for(bv, dev),
        )
    return out
