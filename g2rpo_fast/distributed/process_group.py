"""torch.distributed set-up under `torchrun` (WORLD_SIZE > 1): nccl on CUDA, gloo on CPU.

Prompts are sharded by rank (each rank takes its slice of every global batch), the policy is
wrapped in DDP or sharded by FSDP2 (`parallel.py`), step metrics are averaged over ranks, and
only rank 0 writes files. The process group has a timeout (`dist_timeout_s`): a collective that
waits longer for a stuck rank raises on the waiting ranks, and a rank that dies makes torchrun
stop the others, so a failure ends the run with a message instead of a hang.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch


@dataclass
class DistState:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None


def setup_distributed(timeout_s: float = 600.0, cpu_collectives: bool = False) -> DistState:
    """`cpu_collectives`: on GPUs, also give CPU tensors a backend (gloo), for FSDP's CPU offload,
    whose gradient shards (and so `clip_grad_norm_`'s all-reduce) live in host memory."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistState()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
            if cpu_collectives:
                backend = "cpu:gloo,cuda:nccl"
        from datetime import timedelta

        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistState(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                     backend=dist.get_backend())


def teardown_distributed(state: DistState, failed: bool = False) -> None:
    if state.world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            if not failed:  # no rank tears down while another still has collectives in flight;
                dist.barrier()  # after a failure the others wait elsewhere: exit now, torchrun stops them
            dist.destroy_process_group()


def all_reduce_mean(metrics: dict, state: DistState, device) -> dict:
    """Average the numeric metrics over the ranks that have a value. Every rank builds the same
    step-metric keys, but a value may be missing on some ranks (None or NaN: `reward_guided` /
    `accuracy_guided` of a rank without guided samples): each key travels as (sum, count), so
    the collective has the same length on every rank and one rank's NaN does not poison the
    others; a key that no rank has keeps this rank's None / NaN. Non-numeric values are this rank's."""
    if state.world_size <= 1:
        return metrics
    import torch.distributed as dist

    keys = sorted(k for k, v in metrics.items() if v is None or isinstance(v, (int, float)))
    have = [metrics[k] is not None and math.isfinite(metrics[k]) for k in keys]
    t = torch.tensor([[float(metrics[k]) if h else 0.0 for k, h in zip(keys, have)], [float(h) for h in have]],
                     dtype=torch.float64, device=device)
    dist.all_reduce(t)
    out = dict(metrics)
    out.update({k: total / count for k, total, count in zip(keys, *t.tolist()) if count})
    return out


def all_ranks(flag: bool, state: DistState, device) -> bool:
    """Whether `flag` holds on every rank (this rank's flag alone in one process)."""
    if state.world_size <= 1:
        return bool(flag)
    import torch.distributed as dist

    t = torch.tensor([float(bool(flag))], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def failure_notice(state: DistState, exc: BaseException, timeout_s: float) -> str:
    """The line a failing rank prints before it exits (torchrun then stops the other ranks)."""
    return (f"g2rpo-fast: rank {state.rank}/{state.world_size} failed: {type(exc).__name__}: {exc} "
            f"(collectives time out after dist_timeout_s={timeout_s:g} s; torchrun stops the other ranks)")


def any_rank(flag: bool, dist, device) -> bool:
    """Whether `flag` is set on any rank (a callback's stop on rank 0 stops every rank together)."""
    if dist.world_size <= 1:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)
