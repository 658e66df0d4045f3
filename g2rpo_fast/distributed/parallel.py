"""Data parallelism over the ranks of `torchrun`: DDP, or FSDP2 (`fsdp: true`).

Both wrap a `PackedPolicy` (packing/policy_forward.py), which is called once per micro-batch. DDP then
runs the same collectives on every rank whatever the row split. FSDP gathers each layer at each
call of that layer, so a rank whose row is cut into more pieces would call its layers (and
start all-gathers) more often than the others: `equal_forward_count` makes every rank run the
largest number of pieces of any rank (1-token dummy forwards, zero-weighted).

FSDP2 layout: `fully_shard` on each decoder layer and on the root (`PackedPolicy`: embeddings,
final norm, lm_head), `MixedPrecisionPolicy(param_dtype=compute dtype, reduce_dtype=fp32)`:
parameters are all-gathered in the compute dtype (bf16 on GPU, fp32 on CPU), gradients are
reduce-scattered in fp32 and the fp32 master weights and AdamW state exist only as shards. The
root casts no forward input (`mixed_precision`): the loss's inputs stay fp32.
Gradients are averaged over ranks, as DDP's are, so the loss scaling (`num_items_in_batch`,
gradient accumulation) is the DDP one.

Roll-outs (`gathered_weights`): the engine reads whole weights, so every FSDP unit is
unsharded (all-gathered in the compute dtype) for the roll-out and resharded after. The peak is
one full compute-dtype copy of the model per GPU (bf16: 2 bytes per parameter) on top of the
fp32 shards; no gradients or activations exist then.
"""
from __future__ import annotations

import contextlib

import torch


def decoder_layers(model) -> list[torch.nn.Module]:
    """The transformer blocks: HF's `_no_split_modules` classes (what it never splits over devices)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        from g2rpo_fast.packing.policy_forward import decoder_of

        layers = list(getattr(decoder_of(model), "layers", []))
    if not layers:
        raise ValueError("`fsdp`: cannot find the model's decoder layers to shard")
    return layers


def shard_fsdp(policy: torch.nn.Module, model, compute_dtype: torch.dtype, cpu_offload: bool = False):
    """FSDP2 in place: each decoder layer of `model`, then `policy` (the root) for the rest."""
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    offload = {"offload_policy": CPUOffloadPolicy()} if cpu_offload else {}
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=mixed_precision(compute_dtype, root=False), **offload)
    fully_shard(policy, mp_policy=mixed_precision(compute_dtype, root=True), **offload)
    return policy


def mixed_precision(compute_dtype: torch.dtype, root: bool):
    """Parameters gathered in the compute dtype, gradients reduced in fp32. The root's forward
    inputs are never cast: they are the loss's fp32 inputs (old / reference log-probs,
    advantages, masks), and FSDP's default `cast_forward_inputs=True` would round them to bf16
    (a log-prob of -12.3 in bf16 moves the ratio to 1.0126). Autocast decides the forward's
    compute dtype; the decoder layers keep FSDP's default (their input is the hidden state)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32, cast_forward_inputs=not root)


def wrap_policy(policy, model, config, dist, device, compute_dtype):
    """The module the training forward calls: `policy` itself (one process), DDP over it, or it
    sharded by FSDP2 in place."""
    if dist.world_size <= 1:
        return policy
    if config.fsdp:
        return shard_fsdp(policy, model, compute_dtype, config.fsdp_cpu_offload)
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    # The buffers (RoPE tables) are computed identically on every rank: broadcasting them at every
    # forward would be one more collective for nothing (the newer name of the switch first).
    import inspect

    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters \
        else "broadcast_buffers"
    return DDP(policy, device_ids=ids, **{no_sync: False})


def is_fsdp(module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def fsdp_units(module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered_weights(policy):
    """Full weights on every rank for the roll-out engine (FSDP: unshard every unit, reshard on
    exit, freeing the gathered copy); nothing to do for a replicated model."""
    units = fsdp_units(policy) if is_fsdp(policy) else []
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


def equal_forward_count(batch, dist, comm_device) -> None:
    """Set `batch.num_forwards` (a `PackedBatch`) to the largest piece count of any rank."""
    if dist.world_size <= 1:
        return
    count = torch.tensor([len(batch.row_splits) + 1], dtype=torch.int64, device=comm_device)
    torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
    batch.num_forwards = int(count.item())


def agree_count(count: int, dist, comm_device) -> int:
    """The largest `count` of any rank (every rank then runs that many forwards)."""
    if dist.world_size <= 1:
        return count
    t = torch.tensor([count], dtype=torch.int64, device=comm_device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())
