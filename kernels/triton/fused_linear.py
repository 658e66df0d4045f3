"""Triton kernels for log-probs from hidden states × lm_head, never materialising [N, V] logits.

Forward: each program owns BLOCK_N rows and one slice of the vocabulary; it builds logit tiles
[BLOCK_N, BLOCK_V] with `tl.dot` over H in BLOCK_H chunks and keeps an online logsumexp (and,
optionally, the entropy terms) per row in fp32. Slices are merged on the host (O(splits · N)),
which keeps the GPU busy when N is small. Only `lse [N]` is kept for backward.

Backward recomputes the logit tiles and forms `dlogits = g·(onehot − softmax)/T` in registers:
  * `_dhidden_kernel`: one program per row block walks the vocabulary, d_hidden += dlogits @ W;
  * `_dweight_kernel`: one program per vocab block walks the rows, d_weight += dlogitsᵀ @ hidden
    (and d_bias += Σ_rows dlogits).
Every output element is owned by exactly one program, so the result is deterministic (no atomics).
Accumulators are fp32 buffers updated in place; offsets are int64 so any N works.
FLOPs: 2NHV forward + 2 × 4NHV backward (each backward kernel recomputes the logits), and the
in-place fp32 accumulation re-reads d_hidden once per vocab tile: the price of determinism and
of never writing dlogits. Unmeasured on a GPU so far (see benchmarks/results/fused_linear_cpu.md).

On a CPU tensor the same kernels run in Triton's interpreter, their `@triton.jit` helpers
included (`launch.kernel_for`), whatever the order in which tests import this module.
"""
from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from .launch import launch, on_gpu, sm_count


@triton.jit
def _span(first, limit, BLOCK: tl.constexpr):
    """int64 indices first, ..., first + BLOCK - 1 (no int32 overflow at any N·V) and which are < limit."""
    idx = first + tl.arange(0, BLOCK).to(tl.int64)
    return idx, idx < limit


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr, DOT_F32: tl.constexpr):
    """acc + a @ b: IEEE fp32 products for fp32 inputs (tf32 otherwise loses ~3 digits)."""
    if DOT_F32:  # the interpreter multiplies bf16 bit patterns in tl.dot (triton 3.9)
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _logit_tile(h_ptr, w_ptr, b_ptr, rows, row_ok, cols, col_ok, H,
                HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """hidden[rows] @ weight[cols]ᵀ (+ bias[cols]): an fp32 [BLOCK_N, BLOCK_V] tile, before 1/T."""
    acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
    for k in range(0, H, BLOCK_H):
        ks = k + tl.arange(0, BLOCK_H)
        k_ok = ks < H
        hh = tl.load(h_ptr + rows[:, None] * H + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        wt = tl.load(w_ptr + cols[None, :] * H + ks[:, None], mask=col_ok[None, :] & k_ok[:, None], other=0.0)
        acc = _dot(hh, wt, acc, IEEE, DOT_F32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _row_stats(tgt_ptr, lse_ptr, g_ptr, rows, row_ok, inv_t):
    """Per-row target, logsumexp and g/T for the backward (g = 0 past N, so those rows add nothing)."""
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=-1).to(tl.int64)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + rows, mask=row_ok, other=0.0) * inv_t
    return tgt, lse, g


@triton.jit
def _dlogits(logits, cols, col_ok, tgt, lse, g, inv_t):
    """dlogits = g·(onehot − softmax) of one tile, fp32, from its logits before 1/T."""
    p = tl.where(col_ok[None, :], tl.exp(logits * inv_t - lse[:, None]), 0.0)
    onehot = tl.where(cols[None, :] == tgt[:, None], 1.0, 0.0)
    return (onehot - p) * g[:, None]


@triton.jit
def _add_product(out_ptr, out_rows, out_ok, a, src_ptr, src_rows, src_ok, H,
                 IEEE: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_H: tl.constexpr):
    """out[out_rows, :] += a @ src[src_rows, :] over H in BLOCK_H chunks; the caller owns out_rows."""
    for k in range(0, H, BLOCK_H):
        ks = k + tl.arange(0, BLOCK_H)
        k_ok = ks < H
        src = tl.load(src_ptr + src_rows[:, None] * H + ks[None, :], mask=src_ok[:, None] & k_ok[None, :], other=0.0)
        ptrs = out_ptr + out_rows[:, None] * H + ks[None, :]
        mask = out_ok[:, None] & k_ok[None, :]
        tl.store(ptrs, _dot(a, src, tl.load(ptrs, mask=mask, other=0.0), IEEE, DOT_F32), mask=mask)


@triton.jit
def _fwd_kernel(h_ptr, w_ptr, b_ptr, tgt_ptr, m_ptr, s_ptr, e_ptr, t_ptr,
                N, V, H, inv_t, tiles_per_split,
                HAS_BIAS: tl.constexpr, ENTROPY: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows, row_ok = _span(pid_n.to(tl.int64) * BLOCK_N, N, BLOCK_N)
    tgt = tl.load(tgt_ptr + rows, mask=row_ok, other=-1).to(tl.int64)
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    ent = tl.zeros([BLOCK_N], tl.float32)  # Σ e^{z-m}(z-m), rescaled with m
    tl_sum = tl.zeros([BLOCK_N], tl.float32)  # the target's logit
    v_first = pid_s.to(tl.int64) * tiles_per_split * BLOCK_V
    for it in range(tiles_per_split):
        cols, col_ok = _span(v_first + it * BLOCK_V, V, BLOCK_V)
        acc = _logit_tile(h_ptr, w_ptr, b_ptr, rows, row_ok, cols, col_ok, H,
                          HAS_BIAS, IEEE, DOT_F32, BLOCK_N, BLOCK_V, BLOCK_H)
        z = tl.where(col_ok[None, :], acc * inv_t, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(z - m_new[:, None])
        if ENTROPY:
            zc = tl.where(col_ok[None, :], z - m_new[:, None], 0.0)
            shift = tl.where(s > 0, m - m_new, 0.0) * s  # s = 0 while m = -inf
            ent = alpha * (ent + shift) + tl.sum(p * zc, axis=1)
        s = s * alpha + tl.sum(p, axis=1)
        tl_sum += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
        m = m_new
    # a token id outside the vocabulary matches no column: NaN, not the silent logp = -lse
    tgt_ok = (tgt >= 0) & (tgt < V)
    tl.device_assert(tgt_ok | ~row_ok, "token id outside [0, vocab)")
    tl_sum = tl.where(tgt_ok, tl_sum, float("nan"))
    out = pid_s.to(tl.int64) * N + rows
    tl.store(m_ptr + out, m, mask=row_ok)
    tl.store(s_ptr + out, s, mask=row_ok)
    tl.store(t_ptr + out, tl_sum, mask=row_ok)
    if ENTROPY:
        tl.store(e_ptr + out, ent, mask=row_ok)


@triton.jit
def _dhidden_kernel(h_ptr, w_ptr, b_ptr, tgt_ptr, lse_ptr, g_ptr, dh_ptr,
                    N, V, H, inv_t,
                    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    pid_n = tl.program_id(0)
    rows, row_ok = _span(pid_n.to(tl.int64) * BLOCK_N, N, BLOCK_N)
    tgt, lse, g = _row_stats(tgt_ptr, lse_ptr, g_ptr, rows, row_ok, inv_t)
    for v in range(0, V, BLOCK_V):
        cols, col_ok = _span(v, V, BLOCK_V)
        acc = _logit_tile(h_ptr, w_ptr, b_ptr, rows, row_ok, cols, col_ok, H,
                          HAS_BIAS, IEEE, DOT_F32, BLOCK_N, BLOCK_V, BLOCK_H)
        dz = _dlogits(acc, cols, col_ok, tgt, lse, g, inv_t).to(h_ptr.dtype.element_ty)
        _add_product(dh_ptr, rows, row_ok, dz, w_ptr, cols, col_ok, H, IEEE, DOT_F32, BLOCK_H)


@triton.jit
def _dweight_kernel(h_ptr, w_ptr, b_ptr, tgt_ptr, lse_ptr, g_ptr, dw_ptr, db_ptr,
                    N, V, H, inv_t,
                    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, DOT_F32: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    pid_v = tl.program_id(0)
    cols, col_ok = _span(pid_v.to(tl.int64) * BLOCK_V, V, BLOCK_V)
    db = tl.zeros([BLOCK_V], tl.float32)
    for n in range(0, N, BLOCK_N):
        rows, row_ok = _span(n, N, BLOCK_N)
        tgt, lse, g = _row_stats(tgt_ptr, lse_ptr, g_ptr, rows, row_ok, inv_t)
        acc = _logit_tile(h_ptr, w_ptr, b_ptr, rows, row_ok, cols, col_ok, H,
                          HAS_BIAS, IEEE, DOT_F32, BLOCK_N, BLOCK_V, BLOCK_H)
        dz = _dlogits(acc, cols, col_ok, tgt, lse, g, inv_t)
        if HAS_BIAS:
            db += tl.sum(dz, axis=0)
        dzt = tl.trans(dz.to(h_ptr.dtype.element_ty))
        _add_product(dw_ptr, cols, col_ok, dzt, h_ptr, rows, row_ok, H, IEEE, DOT_F32, BLOCK_H)
    if HAS_BIAS:
        tl.store(db_ptr + cols, db, mask=col_ok)


# ----------------------------------------------------------------------------------- launchers

# Vocabulary slices per row block in the interpreter (CUDA picks enough to fill the SMs); the
# tests raise it to cover the host-side merge of the slices.
VOCAB_SPLITS_CPU = 1


def _blocks(x: torch.Tensor, n: int, v: int):
    if not on_gpu(x.device):
        # The interpreter pays per tile in Python: small tiles for small vocabularies (so tests
        # cross tile edges), wide ones for real vocabularies (V = 151936 in ~150 tiles).
        block_v = max(32, min(1024, triton.next_power_of_2(max(v // 128, 1))))
        return 16, block_v, 16, 1
    if x.dtype == torch.float32:
        # IEEE fp32 dots run on CUDA cores (FMA), with operands in registers: at 64x128 the
        # [BLOCK_V, BLOCK_N] dlogitsᵀ operand of `_dweight_kernel` spilled ~7 KB (ptxas: 32 regs).
        # 64x64 needs ~160 registers per thread in both backward kernels and spills nothing.
        return 64, 64, 32, 8
    return 64, 128, 64, 8


def forward(hidden, weight, bias, token_ids, temperature, return_entropy):
    """hidden [N, H], weight [V, H] contiguous, same dtype -> (logps, lse, entropy|None), fp32 [N]."""
    n, h = hidden.shape
    v = weight.shape[0]
    dev = hidden.device
    if n == 0:  # one tensor each: the custom op's outputs may not alias one another
        logps, lse = (torch.zeros(0, device=dev, dtype=torch.float32) for _ in range(2))
        return logps, lse, (torch.zeros(0, device=dev, dtype=torch.float32) if return_entropy else None)
    block_n, block_v, block_h, warps = _blocks(hidden, n, v)
    row_blocks = triton.cdiv(n, block_n)
    v_tiles = triton.cdiv(v, block_v)
    # Split the vocabulary when there are too few row blocks to fill the GPU.
    want = max(1, (2 * sm_count(dev)) // max(row_blocks, 1)) if on_gpu(dev) else VOCAB_SPLITS_CPU
    tiles_per_split = triton.cdiv(v_tiles, min(want, v_tiles, 65535))
    splits = triton.cdiv(v_tiles, tiles_per_split)  # every split starts inside the vocabulary
    f32 = {"device": dev, "dtype": torch.float32}
    m = torch.empty(splits, n, **f32)
    s = torch.empty(splits, n, **f32)
    t = torch.empty(splits, n, **f32)
    e = torch.empty(splits, n, **f32) if return_entropy else m
    b = bias if bias is not None else hidden
    launch(_fwd_kernel, (row_blocks, splits), dev,
           hidden, weight, b, token_ids, m, s, e, t, n, v, h, 1.0 / temperature, tiles_per_split,
           HAS_BIAS=bias is not None, ENTROPY=return_entropy, IEEE=hidden.dtype == torch.float32,
           DOT_F32=not on_gpu(dev),
           BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h, num_warps=warps)
    if splits == 1:
        lse = m[0] + torch.log(s[0])
        logps = t[0] - lse
        entropy = torch.log(s[0]) - e[0] / s[0] if return_entropy else None
        return logps, lse, entropy
    mx = m.max(dim=0).values
    scale = torch.exp(m - mx)
    total = (s * scale).sum(0)
    lse = mx + torch.log(total)
    logps = t.sum(0) - lse
    entropy = None
    if return_entropy:
        ent = (scale * (e + (m - mx) * s)).sum(0)
        entropy = torch.log(total) - ent / total
    return logps, lse, entropy


# The backward's two implementations (`BACKWARD_PATHS`), chosen by `G2RPO_FAST_FUSED_LINEAR_BACKWARD`
# (read once, at import) or `use_backward_path`:
# - "tiles": the two Triton kernels above, every output element owned by one program (no
#   [N, V] buffer at all); `_add_product` reads and writes each fp32 d_hidden / d_weight tile
#   once per vocabulary / row block: ~2.5 TB of traffic at N = 67k, H = 2048, V = 152k.
# - "chunked": per chunk of rows, the logits recomputed by one GEMM into an fp32 [C, V] buffer
#   (`torch.mm(..., out_dtype=float32)` on CUDA: bf16 tensor cores, fp32 results), dlogits
#   formed in place by the logps backward kernel, then d_hidden = dlogits @ W and
#   d_weight += dlogitsᵀ @ hidden as two more GEMMs (cuBLAS; fp32 accumulators as "tiles").
#   3 GEMMs at tensor-core speed and ~14 bytes per logit of traffic, for one chunk's buffer
#   (`CHUNK_BYTES`). The default: it is the one the arithmetic favours; neither has run on a GPU
#   yet, and `benchmarks/bench_fused_linear.py --backward tiles,chunked` measures both.
BACKWARD_PATHS = ("chunked", "tiles")
BACKWARD_PATH = os.environ.get("G2RPO_FAST_FUSED_LINEAR_BACKWARD", "chunked")
if BACKWARD_PATH not in BACKWARD_PATHS:
    raise ValueError(f"G2RPO_FAST_FUSED_LINEAR_BACKWARD must be one of {BACKWARD_PATHS}, got {BACKWARD_PATH!r}")
CHUNK_BYTES_CUDA = 1 << 30  # the chunked backward's fp32 logits + their 16-bit copy, per chunk
CHUNK_ELEMS_CPU = 1 << 16  # in the interpreter: small chunks, so tests cross chunk edges


@contextlib.contextmanager
def use_backward_path(name: str):
    """Run the fused-linear backward through `name` ("chunked" or "tiles") inside the block."""
    global BACKWARD_PATH
    if name not in BACKWARD_PATHS:
        raise ValueError(f"backward path must be one of {BACKWARD_PATHS}, got {name!r}")
    previous, BACKWARD_PATH = BACKWARD_PATH, name
    try:
        yield
    finally:
        BACKWARD_PATH = previous


def chunk_rows(n: int, v: int, device) -> int:
    """Rows per chunk of the chunked backward (at least 16)."""
    if on_gpu(device):
        return max(16, min(n, CHUNK_BYTES_CUDA // max(6 * v, 1)))
    return max(16, min(n, CHUNK_ELEMS_CPU // max(v, 1)))


def _mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with fp32 results: 16-bit operands on CUDA go through cuBLAS with fp32 output
    (tensor cores); elsewhere (the CPU, an older torch) the operands are upcast."""
    if a.dtype == torch.float32:
        return a @ b
    if a.is_cuda:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (RuntimeError, TypeError):  # a torch without mm's out_dtype
            pass
    return a.float() @ b.float()


def _backward_chunked(hidden, weight, bias, token_ids, lse, g, temperature, need_hidden, need_weight, need_bias):
    from .logps import launch_logps_bwd

    n, h = hidden.shape
    v = weight.shape[0]
    dev = hidden.device
    inv_t = 1.0 / temperature
    dh = torch.empty(n, h, device=dev, dtype=torch.float32) if need_hidden else None
    dw = torch.zeros(v, h, device=dev, dtype=torch.float32) if need_weight else None
    db = torch.zeros(v, device=dev, dtype=torch.float32) if need_bias else None
    zeros = torch.zeros(n, device=dev, dtype=torch.float32)
    step = chunk_rows(n, v, dev)
    for a in range(0, n, step):
        b = min(n, a + step)
        hc = hidden[a:b]
        logits = _mm_f32(hc, weight.T)  # [C, V] fp32
        if bias is not None:
            logits += bias.float()
        # in place: g·(onehot − exp(logits/T − lse)) with 1/T folded into g (the logps backward's
        # contract: shift = lse, log-sum = 0)
        dz = launch_logps_bwd(logits, token_ids[a:b], g[a:b] * inv_t, lse[a:b], zeros[a:b], inv_t, out=logits)
        if need_bias:
            db += dz.sum(0)
        dz = dz.to(hidden.dtype)
        if need_hidden:
            dh[a:b] = _mm_f32(dz, weight)
        if need_weight:
            dw += _mm_f32(dz.T, hc)
    return dh, dw, db


def backward(hidden, weight, bias, token_ids, lse, grad_logps, temperature, need_hidden, need_weight, need_bias):
    """Gradients (d_hidden, d_weight, d_bias) in the input dtypes; None where not needed.

    Accumulation is in fp32 buffers (d_hidden [N, H], d_weight [V, H]), cast once at the end;
    `BACKWARD_PATH` chooses how they are computed (see above).
    """
    if BACKWARD_PATH == "chunked":
        n = hidden.shape[0]
        g = grad_logps.to(torch.float32).contiguous()
        need_b = need_bias and bias is not None
        dh, dw, db = _backward_chunked(hidden, weight, bias, token_ids, lse, g, temperature, need_hidden,
                                       need_weight, need_b) if n else (
            torch.zeros_like(hidden, dtype=torch.float32) if need_hidden else None,
            torch.zeros_like(weight, dtype=torch.float32) if need_weight else None,
            torch.zeros_like(bias, dtype=torch.float32) if need_b else None)
        return (None if dh is None else dh.to(hidden.dtype), None if dw is None else dw.to(weight.dtype),
                None if db is None else db.to(bias.dtype))
    n, h = hidden.shape
    v = weight.shape[0]
    dev = hidden.device
    block_n, block_v, block_h, warps = _blocks(hidden, n, v)
    g = grad_logps.to(torch.float32).contiguous()
    common = {"HAS_BIAS": bias is not None, "IEEE": hidden.dtype == torch.float32, "DOT_F32": not on_gpu(dev),
                  "BLOCK_N": block_n, "BLOCK_V": block_v, "BLOCK_H": block_h, "num_warps": warps}
    b = bias if bias is not None else hidden  # a placeholder pointer when there is no bias
    d_hidden = d_weight = d_bias = None
    if need_hidden:
        dh = torch.zeros(n, h, device=dev, dtype=torch.float32)
        if n > 0:
            launch(_dhidden_kernel, (triton.cdiv(n, block_n),), dev,
                   hidden, weight, b, token_ids, lse, g, dh, n, v, h, 1.0 / temperature, **common)
        d_hidden = dh.to(hidden.dtype)
    if need_weight or need_bias:
        dw = torch.zeros(v, h, device=dev, dtype=torch.float32)
        db = torch.zeros(v, device=dev, dtype=torch.float32) if bias is not None else dw
        if n > 0:
            launch(_dweight_kernel, (triton.cdiv(v, block_v),), dev,
                   hidden, weight, b, token_ids, lse, g, dw, db, n, v, h, 1.0 / temperature, **common)
        d_weight = dw.to(weight.dtype) if need_weight else None
        d_bias = db.to(bias.dtype) if need_bias else None
    return d_hidden, d_weight, d_bias
