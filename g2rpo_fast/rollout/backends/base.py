"""The attention backend protocol and the per-step metadata every backend reads.

A backend is one way to run causal attention, used in two places:

- the roll-out engine, over a paged KV cache: `cache_shape` (the layout), `prepare` (index
  tensors built once per step for all layers), `attend` (store this step's K/V, then attend);
- the packed training forward (and cache-free prefill): `varlen`, causal attention over
  sequences packed into one row and delimited by `cu_seqlens`, with autograd.

`unavailable(device, dtype)` says why a backend cannot run somewhere (no CUDA, a GPU older than
its kernel needs, a dtype its kernel rejects, a missing or broken package), so `select_backend`
decides once, from the device and the compute dtype, and nothing else compares backend names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

ALL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
HALF_DTYPES = (torch.bfloat16, torch.float16)
AMPERE = (8, 0)  # flash-attention 2 (and torch's varlen, flash inside) and native bf16 need sm80+


def cuda_capability(device) -> tuple[int, int]:
    """(major, minor) of a CUDA device; of the current one when `device` has no index."""
    device = torch.device(device)
    return tuple(torch.cuda.get_device_capability(device if device.index is not None else None))


def supports_bf16(device) -> bool:
    """Whether `device` computes in bf16 natively: always on the CPU; on CUDA sm80+ (ROCm: always).
    The rule of `torch.cuda.is_bf16_supported(including_emulation=False)`, asked of `device`
    itself (that function reads the current device only)."""
    device = torch.device(device)
    if device.type != "cuda" or torch.version.hip:
        return True
    return cuda_capability(device) >= AMPERE


@dataclass
class StepMetadata:
    """One engine step over the packed batch (tensors on the model's device)."""

    is_prefill: bool
    has_cached: bool  # some prompt tokens of this prefill come from shared blocks
    block_size: int
    scale: float  # softmax scale of the model's attention
    q_lens: torch.Tensor  # [B] tokens computed this step per sequence
    ctx_lens: torch.Tensor  # [B] int32 tokens in the cache per sequence after this step
    cu_seqlens_q: torch.Tensor  # [B+1] int32
    cu_seqlens_k: torch.Tensor  # [B+1] int32
    max_q: int
    max_k: int
    slot_mapping: torch.Tensor  # [T] flat cache slot of each computed token
    block_tables: torch.Tensor  # [B, max_blocks] int32
    extra: object = None  # what the backend's `prepare` built for this step
    # the same lengths on the host (Python ints): what a step decides in Python reads these,
    # never the device tensors (a device-to-host copy is a host sync)
    q_lens_host: tuple = ()
    ctx_lens_host: tuple = ()
    # the sampler's per-sequence inputs: [B] int64 seeds and generated-token counts (Philox offsets)
    seeds: torch.Tensor | None = None
    counters: torch.Tensor | None = None


class AttentionBackend:
    """Base class: subclasses set the class attributes and implement the five methods."""

    name: ClassVar[str]
    dtypes: ClassVar[tuple] = ALL_DTYPES  # compute dtypes the kernels accept
    needs_cuda: ClassVar[bool] = False
    min_capability: ClassVar[tuple | None] = None  # the CUDA compute capability its kernels need
    default_block_size: ClassVar[int] = 16
    # decode reads only the step's tensors (no per-step Python state): `rollout/decode_step.py`
    # can run it over static buffers and capture it in a CUDA graph
    static_decode: ClassVar[bool] = False

    @classmethod
    def unavailable(cls, device, dtype: torch.dtype) -> str | None:
        """Why this backend cannot run on `device` (a torch.device or a string such as "cuda:1")
        in `dtype`, or None when it can."""
        device = torch.device(device)
        if cls.needs_cuda and device.type != "cuda":
            return "needs a CUDA device"
        if cls.min_capability and device.type == "cuda" and not torch.version.hip:
            have = cuda_capability(device)
            if have < cls.min_capability:
                need = "sm{}{}".format(*cls.min_capability)
                return f"needs a GPU of compute capability {need} or newer (Ampere); this one is sm{have[0]}{have[1]}"
        if dtype not in cls.dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in cls.dtypes)
            return f"runs in {names} only, not {str(dtype).removeprefix('torch.')}"
        return cls.missing_dependency()

    @classmethod
    def missing_dependency(cls) -> str | None:
        return None

    # ---- cache layout -------------------------------------------------------------------
    def cache_shape(self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int) -> tuple:
        """Shape of one layer's K (and V) cache; default head-major [Hkv, blocks, block_size, D]
        (a gather of whole blocks is then one memcpy per (head, block) row)."""
        return (num_kv_heads, num_blocks, block_size, head_dim)

    def num_blocks_of(self, layer_cache: torch.Tensor) -> int:
        return layer_cache.shape[1]

    def paged_view(self, layer_cache: torch.Tensor) -> torch.Tensor:
        """One layer's cache as [blocks, block_size, Hkv, D] (a view, no copy)."""
        return layer_cache.permute(1, 2, 0, 3)

    # ---- engine step --------------------------------------------------------------------
    def reset(self) -> None:
        """Forget per-`generate` state (sequence ids restart with every call)."""

    def prepare(self, meta: StepMetadata, seqs, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
        """Build, once per step, whatever `attend` needs for every layer (into `meta.extra`)."""

    def store_kv(self, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 meta: StepMetadata) -> None:
        """Write the new tokens' K/V ([T, Hkv, D]) into their slots of one layer's cache."""
        num_kv_heads, head_dim = k.shape[1], k.shape[2]
        k_cache.view(num_kv_heads, -1, head_dim).index_copy_(1, meta.slot_mapping, k.transpose(0, 1))
        v_cache.view(num_kv_heads, -1, head_dim).index_copy_(1, meta.slot_mapping, v.transpose(0, 1))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
               v_cache: torch.Tensor, meta: StepMetadata, layer: int) -> torch.Tensor:
        """Store this step's k, v [T, Hkv, D], then causal attention of q [T, Hq, D] over each
        sequence's cached context -> [T, Hq, D]."""
        raise NotImplementedError

    # ---- cache-free packed attention (training forward, prefill without cached blocks) ---
    def varlen(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
               cu_seqlens_k: torch.Tensor, max_q: int, max_k: int, scale: float) -> torch.Tensor:
        """Causal attention within each packed sequence: q [Tq, Hq, D], k/v [Tk, Hkv, D]; sequence
        i is rows cu_seqlens[i]:cu_seqlens[i+1]; when a sequence has fewer queries than keys, its
        queries are its last keys' positions (bottom-right causal). Differentiable."""
        raise NotImplementedError
