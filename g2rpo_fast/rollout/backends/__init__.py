"""Attention backends: one class per way of running attention, behind one small protocol.

    class AttentionBackend:                         # base.py
        name; dtypes; needs_cuda; min_capability; default_block_size
        unavailable(device, dtype) -> reason | None
        cache_shape(num_blocks, block_size, Hkv, D)  # the per-layer KV layout
        prepare(meta, seqs, k_cache, v_cache)        # once per engine step, for all layers
        attend(q, k, v, k_cache, v_cache, meta, layer) -> out   # store K/V, then attend
        varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale) -> out # cache-free, differentiable

| backend        | where          | prefill                          | decode                    | varlen (training)   |
| -------------- | -------------- | -------------------------------- | ------------------------- | ------------------- |
| `flash_attn`   | CUDA fp16/bf16 | flash_attn_varlen_func (cached   | paged kernel              | flash varlen        |
|                | sm80+          | prompt blocks gathered in front) |                           |                     |
| `torch_varlen` | CUDA fp16/bf16 | torch varlen_attn (gather if the | paged kernel              | torch varlen_attn   |
|                | sm80+          | prompt reads shared blocks)      |                           |                     |
| `sdpa`         | any, any dtype | gather + SDPA                    | paged kernel (CUDA),      | SDPA, sequences     |
|                |                |                                  | gathered blocks (CPU)     | grouped by length   |
| `cpu`          | any, any dtype | gather + eager math              | dense decode buffer       | as sdpa             |

All four keep K/V in one layout, head-major [Hkv, blocks, 16, D], so a group's G
samples share every full 16-token block of their prompt (the block manager's prefix cache).

`select_backend(name, device, dtype)` is the one place a backend is chosen: "auto" takes the
first of flash_attn, torch_varlen, sdpa that can run on that CUDA device in that compute dtype
(an fp32 model on CUDA gets sdpa: the flash kernels reject fp32; a GPU older than sm80 gets
sdpa: flash-attention 2 needs Ampere; a flash-attn that is installed but does not import is
skipped), and `cpu` elsewhere.
"""
from __future__ import annotations

import torch

from .base import AttentionBackend, StepMetadata
from .cpu_dense import CpuDenseBackend
from .flash_attn import FlashAttnBackend
from .sdpa import SdpaBackend
from .torch_varlen import TorchVarlenBackend

BACKENDS: dict[str, type[AttentionBackend]] = {
    cls.name: cls for cls in (FlashAttnBackend, TorchVarlenBackend, SdpaBackend, CpuDenseBackend)}
_AUTO = {"cuda": (FlashAttnBackend, TorchVarlenBackend, SdpaBackend), "cpu": (CpuDenseBackend,)}


def select_backend(name: str, device, dtype: torch.dtype, option: str = "attn_backend") -> type[AttentionBackend]:
    """The backend class for `name` ("auto" or one of BACKENDS) on `device` in compute `dtype`;
    a ValueError naming `option` when the named one cannot run there."""
    device = torch.device(device)
    device_type = device.type
    if name == "auto":
        for cls in _AUTO.get(device_type, (SdpaBackend,)):
            if cls.unavailable(device, dtype) is None:
                return cls
        return SdpaBackend
    if name not in BACKENDS:
        raise ValueError(f"`{option}` must be 'auto' or one of {sorted(BACKENDS)}, got {name!r}")
    cls = BACKENDS[name]
    reason = cls.unavailable(device, dtype)
    if reason is not None:
        raise ValueError(f"`{option}`={name!r} cannot run on {device_type} in "
                         f"{str(dtype).removeprefix('torch.')}: {reason}")
    return cls


__all__ = ["BACKENDS", "AttentionBackend", "CpuDenseBackend", "FlashAttnBackend", "SdpaBackend", "StepMetadata",
           "TorchVarlenBackend", "select_backend"]
