"""Group-normalised advantage (DESIGN.md section 3).

- `group_advantages`: the checked public op;
- `group_advantages_ref`: its PyTorch reference (the spec);
- the Triton path calls `kernels/triton/advantages.py` (no autograd: advantages carry no gradient).
"""
from __future__ import annotations

import torch

from .backend import use_triton
from .checks import check_choice, check_finite, check_tensor


def check_group_size(group_size, num_seqs, scale_rewards):
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"`group_size` must be a positive int, got {group_size!r}")
    if num_seqs % group_size != 0:
        raise ValueError(f"`group_size`={group_size} does not divide the number of sequences {num_seqs}")
    if scale_rewards == "group" and group_size < 2:
        raise ValueError("`group_size` must be >= 2 with scale_rewards='group' (the std of one sample is undefined)")


def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: str = "group", eps: float = 1e-4):
    """Advantages `[S]` from rewards `[S]` ordered group by group (G consecutive samples per prompt).

    `scale_rewards`: "group" divides by each group's unbiased std, "batch" by the std of the
    whole batch, "none" only centres. A group of equal rewards gets exactly 0, never NaN.
    The result is fp32 (fp64 for fp64 input) and carries no gradient.
    """
    check_tensor(rewards, "rewards", floating=True, ndim=1)
    check_choice(scale_rewards, "scale_rewards", ("group", "batch", "none"))
    check_group_size(group_size, rewards.numel(), scale_rewards)
    check_finite(rewards, "rewards")
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"`eps` must be a non-negative number, got {eps!r}")
    if use_triton(rewards):
        from g2rpo_fast.kernels.advantages import launch_group_advantages

        return launch_group_advantages(rewards.detach(), group_size, scale_rewards, float(eps))
    return group_advantages_ref(rewards.detach(), group_size, scale_rewards, eps)


def group_advantages_ref(rewards, group_size, scale_rewards="group", eps=1e-4):
    """The spec: (r - mean_group) / (std + eps) with the unbiased std, in fp32 (fp64 for fp64).

    A group whose rewards are all equal gets advantages exactly 0 (numerator is 0).
    """
    dtype = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    r = rewards.to(dtype).view(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale_rewards == "group":
        scale = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
    elif scale_rewards == "batch":
        scale = rewards.to(dtype).std() if rewards.numel() > 1 else rewards.new_zeros((), dtype=dtype)
    else:  # "none"
        return centred.reshape(-1)
    return (centred / (scale + eps)).reshape(-1)
