"""Per-token log-probs from logits: log_softmax(logits / T) gathered at the chosen tokens."""
from __future__ import annotations

import torch

from ._checks import check_same_device, check_shape, check_temperature, check_tensor, check_token_ids
from ._dispatch import use_triton
from .reference import per_token_logps_ref


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


def compute_per_token_logps(logits, token_ids, temperature=1.0, return_entropy=False):
    """`per_token_logps` without the checks, for callers that validated already (the losses):
    the token-id range check costs a device sync, which the hot path should pay once."""
    if use_triton(logits):
        from .logps_triton import per_token_logps_triton

        return per_token_logps_triton(logits, token_ids, temperature, return_entropy)
    out = per_token_logps_ref(logits, token_ids, temperature, return_entropy)
    if return_entropy:
        return out[0], out[1].detach()
    return out
