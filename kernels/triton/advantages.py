"""Triton kernel: group-normalised advantages (DESIGN.md section 3).

One program per group (grid-stride over groups): mean, unbiased std over the group's `G`
rewards, `(r - mean) / (std + eps)`. `scale_rewards="batch"` divides by one batch-wide std
that the caller passes in (a 1-element tensor, so no host sync); "none" only centres.
Arithmetic runs in the output's dtype (fp32, or fp64 for fp64 rewards), like the reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import launch

SCALE_NONE, SCALE_GROUP, SCALE_BATCH = 0, 1, 2


@triton.jit
def group_advantages_kernel(rewards_ptr, out_ptr, batch_std_ptr, n_groups, group_size, eps,
                            BLOCK_G: tl.constexpr, SCALE: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_G)
    valid = cols < group_size
    dt = out_ptr.dtype.element_ty
    for grp in range(pid, n_groups, nprog):
        offs = tl.cast(grp, tl.int64) * group_size + cols
        r = tl.load(rewards_ptr + offs, mask=valid, other=0.0).to(dt)
        mean = tl.sum(r, 0) / group_size
        centred = tl.where(valid, r - mean, 0.0)
        if SCALE == 1:
            std = tl.sqrt(tl.sum(centred * centred, 0) / (group_size - 1))
            centred = centred / (std + eps)
        if SCALE == 2:
            centred = centred / (tl.load(batch_std_ptr).to(dt) + eps)
        tl.store(out_ptr + offs, centred.to(dt), mask=valid)


def launch_group_advantages(rewards, group_size, scale_rewards, eps):
    """rewards [S] (validated; S divisible by group_size) -> advantages [S] fp32 (fp64 for fp64)."""
    dtype = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    r = rewards.contiguous()
    out = torch.empty(r.shape, device=r.device, dtype=dtype)
    n_groups = r.numel() // group_size
    if n_groups == 0:
        return out
    scale = {"none": SCALE_NONE, "group": SCALE_GROUP, "batch": SCALE_BATCH}[scale_rewards]
    if scale == SCALE_BATCH:
        batch_std = r.to(dtype).std().reshape(1) if r.numel() > 1 else torch.zeros(1, device=r.device, dtype=dtype)
    else:
        batch_std = out  # unused
    grid = (max(1, min(n_groups, 1 << 16)),)
    launch(
        group_advantages_kernel, grid, r.device, r, out, batch_std, n_groups, group_size, float(eps),
        BLOCK_G=max(2, triton.next_power_of_2(group_size)), SCALE=scale)
    return out
