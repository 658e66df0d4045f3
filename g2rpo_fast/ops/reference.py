"""Plain PyTorch references: the spec every kernel is tested against.

Each function is the simplest correct computation of its op, in fp32 (or float64 when the
input is float64, which is how the tests build the ground truth). No validation here: the
public functions in this package validate and then dispatch to a reference or a kernel.
"""
from __future__ import annotations

import torch


def per_token_logps_ref(logits, token_ids, temperature=1.0, return_entropy=False):
    """log_softmax(logits / T)[token_ids] over the last dim, computed in fp32 (or fp64)."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logp_all = torch.log_softmax(logits.to(dtype) / temperature, dim=-1)
    logps = logp_all.gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1)
    if not return_entropy:
        return logps
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logps, entropy


def group_advantages_ref(rewards, group_size, scale_rewards="group", eps=1e-4):
    """(r - mean_group) / (std + eps) with the unbiased std, per DESIGN.md section 3.

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
