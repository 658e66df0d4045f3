"""Per-token log-probs straight from hidden states and the lm_head, without [N, V] logits.

`fused_linear_logps(hidden, weight, token_ids)` equals
`per_token_logps(hidden @ weight.T + bias, token_ids)` but only ever holds a tile of logits.

- `fused_linear_logps`: the checked public op;
- `chunked_forward` / `chunked_backward`: its PyTorch path, which walks `CHUNK_ELEMS`-sized row
  blocks (the spec it is tested against is `per_token_logps_ref` of the materialised logits);
- `FusedLinearLogps`: the autograd Function over either path; the Triton one is
  `kernels/triton/fused_linear.py` (CUDA tensors, or CPU tensors on the "triton" backend);
- the native path (CPU, `g2rpo_fast._C` built): the custom op `torch.ops.g2rpo_fast.linear_logps`
  (`ops/library.py`) over the C++ kernels of `kernels/cpu/fused_linear.cpp`.
Both keep only `lse [N]` for backward and recompute the logits there, so the [N, V] logits and
their gradient are never written.
"""
from __future__ import annotations

import torch

from .backend import implementation, use_custom_op
from .checks import check_same_device, check_shape, check_temperature, check_tensor, check_token_ids

# Logit elements per chunk on the PyTorch path: 2**23 fp32 = 32 MiB (256 rows at V = 32768).
CHUNK_ELEMS = 1 << 23
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _row_chunk(n, v):
    return max(1, min(n, CHUNK_ELEMS // max(v, 1)))


def _chunk_logits(h_c, weight, bias, temperature, acc_dtype):
    z = (h_c @ weight.T).to(acc_dtype)
    if bias is not None:
        z += bias.to(acc_dtype)
    if temperature != 1.0:
        z *= 1.0 / temperature
    return z


def chunked_forward(hidden, weight, bias, token_ids, temperature=1.0, return_entropy=False):
    """PyTorch reference path: (logps, lse, entropy|None) in fp32 (fp64 for fp64 input)."""
    n, v = hidden.shape[0], weight.shape[0]
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    logps = torch.empty(n, device=hidden.device, dtype=acc)
    lse = torch.empty_like(logps)
    entropy = torch.empty_like(logps) if return_entropy else None
    step = _row_chunk(n, v)
    for a in range(0, n, step):
        z = _chunk_logits(hidden[a:a + step], weight, bias, temperature, acc)
        l_c = torch.logsumexp(z, dim=-1)
        lse[a:a + step] = l_c
        logps[a:a + step] = z.gather(1, token_ids[a:a + step, None]).squeeze(1) - l_c
        if return_entropy:
            z.sub_(l_c[:, None])  # log-probs, in place
            entropy[a:a + step] = -(z.exp() * z).sum(-1)
        del z
    return logps, lse, entropy


def chunked_backward(hidden, weight, bias, token_ids, lse, grad_logps, temperature,
                     need_hidden=True, need_weight=True, need_bias=True):
    """Recompute each chunk's logits; dlogits = g·(onehot − softmax)/T lives one chunk at a time."""
    n, v = hidden.shape[0], weight.shape[0]
    acc = lse.dtype
    g_all = grad_logps.to(acc) / temperature
    d_hidden = torch.empty_like(hidden) if need_hidden else None
    d_weight = torch.zeros(weight.shape, device=weight.device, dtype=acc) if need_weight else None
    d_bias = torch.zeros(v, device=weight.device, dtype=acc) if (need_bias and bias is not None) else None
    step = _row_chunk(n, v)
    for a in range(0, n, step):
        h_c, g = hidden[a:a + step], g_all[a:a + step]
        dz = _chunk_logits(h_c, weight, bias, temperature, acc)
        dz.sub_(lse[a:a + step, None]).exp_().mul_(-g[:, None])  # -g·softmax, in place
        dz.scatter_add_(1, token_ids[a:a + step, None], g[:, None])
        if d_bias is not None:
            d_bias += dz.sum(0)
        dz_c = dz.to(hidden.dtype)
        if need_hidden:
            torch.matmul(dz_c, weight, out=d_hidden[a:a + step])
        if need_weight:
            if dz_c.dtype == acc:
                d_weight.addmm_(dz_c.T, h_c)
            else:
                d_weight += (dz_c.T @ h_c).to(acc)
        del dz, dz_c
    return (d_hidden,
            None if d_weight is None else d_weight.to(weight.dtype),
            None if d_bias is None else d_bias.to(bias.dtype))


def _impls(triton_path):
    if triton_path:
        from ..kernels import fused_linear as k

        return k.forward, k.backward
    return chunked_forward, chunked_backward


class FusedLinearLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, token_ids, temperature, return_entropy, triton_path):
        fwd, _ = _impls(triton_path)
        logps, lse, entropy = fwd(hidden, weight, bias, token_ids, temperature, return_entropy)
        ctx.save_for_backward(hidden, weight, bias, token_ids, lse)
        ctx.temperature, ctx.triton_path = temperature, triton_path
        if return_entropy:
            ctx.mark_non_differentiable(entropy)
            return logps, entropy
        return logps

    @staticmethod
    def backward(ctx, grad_logps, *_):
        hidden, weight, bias, token_ids, lse = ctx.saved_tensors
        _, bwd = _impls(ctx.triton_path)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        d_h, d_w, d_b = bwd(hidden, weight, bias, token_ids, lse, grad_logps.contiguous(), ctx.temperature,
                            need_h, need_w, need_b and bias is not None)
        return d_h, d_w, d_b, None, None, None, None


def fused_linear_logps(hidden: torch.Tensor, weight: torch.Tensor, token_ids: torch.Tensor, bias=None,
                       temperature: float = 1.0, return_entropy: bool = False):
    """log softmax((hidden @ weight.T + bias) / T)[token_ids], fp32 (fp64 for fp64 input).

    `hidden` is [N, H] or [B, T, H], `weight` the lm_head [V, H], `bias` [V] or None, all of one
    dtype (fp32, bf16, fp16 or fp64); `token_ids` has shape `hidden.shape[:-1]`. Differentiable
    in hidden, weight and bias; under `torch.no_grad()` nothing is kept for backward. With
    `return_entropy` also returns each row's entropy (detached).
    """
    check_tensor(token_ids, "token_ids", integer=True)
    check_linear_inputs(hidden, weight, bias, token_ids)
    check_shape(token_ids, "token_ids", hidden.shape[:-1])
    check_token_ids(token_ids, weight.shape[0])
    check_temperature(temperature)
    return compute_fused_linear_logps(hidden, weight, token_ids, bias, temperature, return_entropy)


def check_linear_inputs(hidden, weight, bias=None, token_ids=None):
    """Shapes, dtypes and devices of hidden [.., H], weight [V, H] and bias [V]."""
    check_tensor(hidden, "hidden", floating=True, ndim=(2, 3))
    check_tensor(weight, "weight", floating=True, ndim=2)
    check_same_device(hidden, weight=weight, token_ids=token_ids, bias=bias)
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"`weight` has shape {tuple(weight.shape)}: its width must equal the hidden size "
                         f"{hidden.shape[-1]} of `hidden` {tuple(hidden.shape)}")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"`weight` has dtype {weight.dtype} but `hidden` has {hidden.dtype}")
    if bias is not None:
        check_tensor(bias, "bias", floating=True)
        check_shape(bias, "bias", (weight.shape[0],))
        if bias.dtype != hidden.dtype:
            raise ValueError(f"`bias` has dtype {bias.dtype} but `hidden` has {hidden.dtype}")


def compute_fused_linear_logps(hidden, weight, token_ids, bias=None, temperature=1.0, return_entropy=False):
    """`fused_linear_logps` without the checks, for callers that validated already (the loss)."""
    lead = hidden.shape[:-1]
    h2 = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    w = weight.contiguous()
    b = None if bias is None else bias.contiguous()
    t = token_ids.reshape(-1).long().contiguous()
    path = implementation(hidden) if hidden.dtype in _TRITON_DTYPES else "torch"
    if use_custom_op(hidden, path):
        from . import library

        if torch.is_grad_enabled() or path != "native":
            logps, _, entropy = library.linear_logps(h2, w, b, t, float(temperature), bool(return_entropy))
        else:  # reference / old log-probs: the C++ forward alone, nothing kept
            logps, _, entropy = torch.ops.g2rpo_fast.fused_linear_logps_fwd(h2, w, b, t, float(temperature),
                                                                             bool(return_entropy))
        logps = logps.reshape(lead)
        return (logps, entropy.detach().reshape(lead)) if return_entropy else logps
    triton_path = path == "triton"
    needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (hidden, weight, bias))
    if needs_grad:
        out = FusedLinearLogps.apply(h2, w, b, t, float(temperature), bool(return_entropy), triton_path)
        logps, entropy = out if return_entropy else (out, None)
    else:  # reference / old log-probs: run the forward alone, keep nothing
        fwd, _ = _impls(triton_path)
        with torch.no_grad():
            logps, _, entropy = fwd(h2.detach(), w.detach(), None if b is None else b.detach(), t,
                                    float(temperature), bool(return_entropy))
    logps = logps.reshape(lead)
    return (logps, entropy.reshape(lead)) if return_entropy else logps
