"""Triton kernel: the token-level G²RPO loss fused with the log-prob of each token.

One program walks rows (tokens). For a row it reads the logits once (online log-sum-exp over
vocabulary tiles, fp32), forms `logp`, then, locally, the per-token loss `L_t` of DESIGN.md
section 4 (ratio, `delta` cap, clip to [1-ε_low, 1+ε_high], k3 KL times β) and its derivative
`dL_t/dlogp_t`, both multiplied by the token's aggregation coefficient `c_t` (section 6; the
caller computes `c_t = w_t / normaliser` from the masks). A row with `c_t == 0` (padding,
guidance, prompt) reads nothing and writes zeros.

The backward is `kernels.logps.logps_bwd_kernel` with `grad = grad_out · dlogp_t / T`.

Derivatives follow PyTorch's conventions so that the kernel matches the reference autograd
bit for bit in spirit: `clamp` passes the gradient on the closed interval, and `minimum`
splits it in half on a tie (the common case: inside the clip range the two terms are equal).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import block_v_for, launch, num_programs, row_strides, warps_for


@triton.jit
def g2rpo_loss_fwd_kernel(
    logits_ptr, stride_b, stride_t, seq_len, ids_ptr, coef_ptr, adv_ptr, old_ptr, ref_ptr,
    logp_ptr, rowmax_ptr, logsum_ptr, loss_ptr, dlogp_ptr, kl_ptr, low_ptr, high_ptr,
    n_rows, vocab, inv_t, beta, clip_lo, clip_hi, delta,
    BLOCK_V: tl.constexpr, HAS_OLD: tl.constexpr, HAS_REF: tl.constexpr, USE_KL: tl.constexpr,
    HAS_DELTA: tl.constexpr,
):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_V)
    for row in range(pid, n_rows, nprog):
        c = tl.load(coef_ptr + row).to(tl.float32)
        if c == 0:
            # masked token: contributes nothing to the loss, the gradient or the metrics
            tl.store(logp_ptr + row, 0.0)
            tl.store(rowmax_ptr + row, 0.0)
            tl.store(logsum_ptr + row, 0.0)
            tl.store(loss_ptr + row, 0.0)
            tl.store(dlogp_ptr + row, 0.0)
            tl.store(kl_ptr + row, 0.0)
            tl.store(low_ptr + row, 0.0)
            tl.store(high_ptr + row, 0.0)
        else:
            r64 = tl.cast(row, tl.int64)
            base = logits_ptr + (r64 // seq_len) * stride_b + (r64 % seq_len) * stride_t
            m = tl.max(tl.full([BLOCK_V], float("-inf"), tl.float32), 0)
            s = tl.sum(tl.zeros([BLOCK_V], tl.float32), 0)
            for start in range(0, vocab, BLOCK_V):
                offs = start + cols
                x = tl.load(base + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32) * inv_t
                m_new = tl.maximum(m, tl.max(x, 0))
                s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
                m = m_new
            tok = tl.load(ids_ptr + row).to(tl.int64)
            log_s = tl.log(s)
            # a bad id (unchecked under torch.compile): NaN, never an illegal memory access
            tok_ok = (tok >= 0) & (tok < vocab)
            tl.device_assert(tok_ok, "token id outside [0, vocab)")
            logp = (tl.load(base + tok, mask=tok_ok, other=float("nan")).to(tl.float32) * inv_t - m) - log_s

            # ---- per-token surrogate (all fp32, O(1) per row)
            a = tl.load(adv_ptr + row).to(tl.float32)
            if HAS_OLD:
                ratio = tl.exp(logp - tl.load(old_ptr + row).to(tl.float32))
            else:
                ratio = logp * 0.0 + 1.0  # exp(logp - logp.detach())
            if HAS_DELTA:
                unclipped = tl.minimum(ratio, delta)
                d_unclipped = tl.where(ratio <= delta, ratio, 0.0)
            else:
                unclipped = ratio
                d_unclipped = ratio
            clipped = tl.minimum(tl.maximum(ratio, clip_lo), clip_hi)
            d_clipped = tl.where((ratio >= clip_lo) & (ratio <= clip_hi), ratio, 0.0)
            u = unclipped * a
            v = clipped * a
            share_u = tl.where(u < v, 1.0, tl.where(u == v, 0.5, 0.0))
            loss = -tl.minimum(u, v)
            dloss = -(share_u * a * d_unclipped + (1.0 - share_u) * a * d_clipped)
            kl = logp * 0.0
            if HAS_REF:
                diff = tl.load(ref_ptr + row).to(tl.float32) - logp
                e = tl.exp(diff)
                kl = e - diff - 1.0
                if USE_KL:
                    loss = loss + beta * kl
                    dloss = dloss + beta * (1.0 - e)
            # min/max drop a NaN operand on the GPU: say NaN for a bad id explicitly
            loss = tl.where(tok_ok, loss, float("nan"))
            dloss = tl.where(tok_ok, dloss, float("nan"))
            low = tl.where((ratio < clip_lo) & (a < 0), 1.0, 0.0)
            high = tl.where((ratio > clip_hi) & (a > 0), 1.0, 0.0)

            tl.store(logp_ptr + row, logp)
            tl.store(rowmax_ptr + row, m)
            tl.store(logsum_ptr + row, log_s)
            tl.store(loss_ptr + row, c * loss)
            tl.store(dlogp_ptr + row, c * dloss)
            tl.store(kl_ptr + row, kl)
            tl.store(low_ptr + row, low)
            tl.store(high_ptr + row, high)


def launch_g2rpo_loss_fwd(logits2d, ids, coef, adv_tok, old, ref, *, inv_t, beta, eps_low, eps_high, delta):
    """Per-row outputs (all fp32 [N]): logp, rowmax, logsum, c·L, c·dL/dlogp, kl, low, high."""
    vocab = logits2d.shape[-1]
    n = ids.numel()
    dev = logits2d.device
    # eight separate buffers, not views of one: the custom op returns seven of them, and
    # torch.library refuses outputs that alias each other (a crash under torch.compile)
    logp, rowmax, logsum, loss, dlogp, kl, low, high = (torch.empty(n, device=dev, dtype=torch.float32)
                                                        for _ in range(8))
    if n:
        bv = block_v_for(vocab, dev)
        launch(
            g2rpo_loss_fwd_kernel, (num_programs(n, dev),), dev, logits2d, *row_strides(logits2d), ids, coef, adv_tok,
            coef if old is None else old, coef if ref is None else ref,
            logp, rowmax, logsum, loss, dlogp, kl, low, high,
            n, vocab, float(inv_t), float(beta), 1.0 - float(eps_low), 1.0 + float(eps_high),
            1.0 if delta is None else float(delta),
            BLOCK_V=bv, HAS_OLD=old is not None, HAS_REF=ref is not None, USE_KL=(ref is not None and beta != 0),
            HAS_DELTA=delta is not None, num_warps=warps_for(bv, dev),
        )
    return logp, rowmax, logsum, loss, dlogp, kl, low, high
