"""Ops: each has one plain PyTorch reference (`reference.py`, the spec) and dispatches to a
Triton kernel for CUDA tensors (or on the CPU under TRITON_INTERPRET=1)."""
from .advantages import group_advantages
from .logps import per_token_logps


def fused_linear_logps(*args, **kwargs):
    """Log-probs from hidden states × lm_head without materialising [N, V] logits."""
    from .fused_linear import fused_linear_logps as impl

    return impl(*args, **kwargs)


__all__ = ["fused_linear_logps", "group_advantages", "per_token_logps"]
