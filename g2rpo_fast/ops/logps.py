"""Per-token log-probs from logits: log_softmax(logits / T) gathered at the chosen tokens.

- `per_token_logps`: the checked public op;
- `per_token_logps_ref`: its PyTorch reference (the spec);
- `PerTokenLogps`: the autograd Function over the Triton kernels of `kernels/triton/logps.py` (or, for
  the in-place backward on the native path, the C++ ones);
- the native path (CPU, `g2rpo_fast._C` built) is the custom op `torch.ops.g2rpo_fast.token_logps`
  (`ops/library.py`), which `torch.compile` traces.

Memory of the Triton path: the forward saves the logits (a reference, not a copy) plus 8 bytes
per row; the backward writes one `[N, V]` gradient in the logits' dtype, or, with
`inplace_backward=True`, writes it into the logits buffer itself (saves N·V·itemsize bytes;
only valid when nothing reads those logits after the backward, e.g. an activation freed right
after).
"""
from __future__ import annotations

import torch

from .backend import implementation, use_custom_op
from .checks import check_same_device, check_shape, check_temperature, check_tensor, check_token_ids


def per_token_logps(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0,
                    return_entropy: bool = False):
    """Log-prob `[...]` of `token_ids` under `softmax(logits / temperature)`, always in fp32.

    `logits` is padded `[B, T, V]` or packed `[N, V]` (fp32, bf16 or fp16); `token_ids` has the
    same leading shape. With `return_entropy` also returns the entropy of each row's
    distribution (no gradient flows through it). Differentiable with respect to `logits`.
    """
    check_tensor(logits, "logits", floating=True, ndim=(2, 3))
    check_shape(token_ids, "token_ids", logits.shape[:-1])
    check_same_device(logits, token_ids=token_ids)
    check_token_ids(token_ids, logits.shape[-1])
    check_temperature(temperature)
    return compute_per_token_logps(logits, token_ids, temperature, return_entropy)


def per_token_logps_ref(logits, token_ids, temperature=1.0, return_entropy=False):
    """The spec: log_softmax(logits / T)[token_ids] over the last dim, in fp32 (fp64 for fp64)."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logp_all = torch.log_softmax(logits.to(dtype) / temperature, dim=-1)
    logps = logp_all.gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1)
    if not return_entropy:
        return logps
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logps, entropy


def compute_per_token_logps(logits, token_ids, temperature=1.0, return_entropy=False, *, inplace_backward=False):
    """`per_token_logps` without the checks, for callers that validated already (the losses):
    the token-id range check costs a device sync, which the hot path should pay once.
    float64 logits (a test/debug dtype, never a training one) always take the reference."""
    path = "torch" if logits.dtype == torch.float64 else implementation(logits)
    if use_custom_op(logits, path) and not inplace_backward:
        from . import library

        ids = token_ids.reshape(-1).long().contiguous()
        logp, _, _, entropy = library.token_logps(kernel_logits(logits), ids, 1.0 / float(temperature),
                                                  bool(return_entropy))
        shape = logits.shape[:-1]
        return (logp.view(shape), entropy.detach().view(shape)) if return_entropy else logp.view(shape)
    if path != "torch":
        return PerTokenLogps.apply(logits, token_ids, float(temperature), bool(return_entropy), inplace_backward,
                                   path == "native")
    out = per_token_logps_ref(logits, token_ids, temperature, return_entropy)
    return (out[0], out[1].detach()) if return_entropy else out


def kernel_logits(logits: torch.Tensor) -> torch.Tensor:
    """[N, V] or [B, T, V] with a unit last stride; other strides are read in place, so
    TRL's `logits[:, :-1]` costs no copy."""
    return logits if logits.stride(-1) == 1 else logits.contiguous()


def can_write_in_place(x: torch.Tensor, logits: torch.Tensor, requested: bool) -> bool:
    return bool(requested) and x is logits and logits.is_contiguous()


def logps_launchers(native: bool):
    """(launch_logps_fwd, launch_logps_bwd): the C++ kernels' or the Triton kernels' (same signatures)."""
    if native:
        from g2rpo_fast import _native as k
    else:
        from g2rpo_fast.kernels import logps as k
    return k.launch_logps_fwd, k.launch_logps_bwd


class PerTokenLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, token_ids, temperature, with_entropy, inplace_backward, native=False):
        launch_logps_fwd, _ = logps_launchers(native)
        ctx.native = native
        x = kernel_logits(logits)
        ids = token_ids.reshape(-1).contiguous()
        logp, rowmax, logsum, entropy = launch_logps_fwd(x, ids, 1.0 / temperature, with_entropy)
        ctx.save_for_backward(x, ids, rowmax, logsum)
        ctx.temperature = temperature
        ctx.logits_shape = logits.shape
        ctx.inplace = can_write_in_place(x, logits, inplace_backward)
        shape = logits.shape[:-1]
        if entropy is None:
            return logp.view(shape)
        entropy = entropy.view(shape)
        ctx.mark_non_differentiable(entropy)
        return logp.view(shape), entropy

    @staticmethod
    def backward(ctx, grad_logp, *unused):
        _, launch_logps_bwd = logps_launchers(ctx.native)
        x, ids, rowmax, logsum = ctx.saved_tensors
        if grad_logp is None:
            return None, None, None, None, None, None
        g = grad_logp.reshape(-1).to(torch.float32) / ctx.temperature
        dx = launch_logps_bwd(x, ids, g, rowmax, logsum, 1.0 / ctx.temperature, out=x if ctx.inplace else None)
        return dx.view(ctx.logits_shape), None, None, None, None, None
