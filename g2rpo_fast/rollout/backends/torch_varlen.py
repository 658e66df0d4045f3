"""`torch_varlen`: PyTorch's own varlen flash attention (`torch.nn.attention.varlen.varlen_attn`).

CUDA sm80+ only, fp16/bf16 only (it is flash-attention inside). Used for prefill without cached
blocks and for the training forward; prefill that reads shared prompt blocks gathers them
(see gather.py) and decode reads the paged cache in place (`ops.paged_decode_attention`),
both inherited from the SDPA backend.

Its keyword arguments changed across releases, so `varlen_call` reads the installed
signature (never the version number):
- torch 2.9-2.10: `is_causal=`; no `scale=` (fixed 1/sqrt(D)), no grouped-query attention;
- torch 2.11: `scale=`, `window_size=(left, right)` ((-1, 0) is causal), no `enable_gqa=`;
- torch 2.12+: also `enable_gqa=` (plus paged `block_table=`, unused here).
Without `scale=`, q is pre-multiplied by scale·sqrt(D); without `enable_gqa=`, K/V heads are
repeated to the query head count.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import math

from .base import AMPERE, HALF_DTYPES
from .sdpa import SdpaBackend


def load_varlen_attn():
    """The installed `varlen_attn` (a function so tests can substitute a stand-in)."""
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn


def has_torch_varlen() -> bool:
    try:
        return importlib.util.find_spec("torch.nn.attention.varlen") is not None
    except ModuleNotFoundError:
        return False


@functools.lru_cache(maxsize=8)
def _parameters(fn) -> frozenset:
    return frozenset(inspect.signature(fn).parameters)


def varlen_call(fn, q, k, v, cu_seqlens_q, cu_seqlens_k, max_q: int, max_k: int, scale: float):
    """Causal `fn(q, k, v, cu_q, cu_k, max_q, max_k, ...)` for whichever signature `fn` has."""
    params = _parameters(fn)
    kwargs = {}
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0)
    elif "is_causal" in params:
        kwargs["is_causal"] = True
    else:
        raise ValueError("attn_implementation='torch_varlen': this torch's varlen_attn takes neither "
                         "window_size= nor is_causal=, so it cannot run causal attention")
    if "scale" in params:
        kwargs["scale"] = scale
    elif not math.isclose(scale * math.sqrt(q.shape[-1]), 1.0, rel_tol=1e-6):
        q = q * (scale * math.sqrt(q.shape[-1]))  # its fixed scale is 1/sqrt(D)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, **kwargs)


class TorchVarlenBackend(SdpaBackend):
    name = "torch_varlen"
    dtypes = HALF_DTYPES
    needs_cuda = True
    min_capability = AMPERE  # flash-attention inside

    @classmethod
    def missing_dependency(cls):
        return None if has_torch_varlen() else "this torch has no torch.nn.attention.varlen"

    def prepare(self, meta, seqs, k_cache, v_cache) -> None:
        if meta.has_cached:  # prefill reading shared blocks: gather them
            super().prepare(meta, seqs, k_cache, v_cache)

    def attend(self, q, k, v, k_cache, v_cache, meta, layer):
        if meta.is_prefill and not meta.has_cached:
            self.store_kv(k, v, k_cache, v_cache, meta)
            return self.varlen(q, k, v, meta.cu_seqlens_q, meta.cu_seqlens_k, meta.max_q, meta.max_k, meta.scale)
        return super().attend(q, k, v, k_cache, v_cache, meta, layer)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, scale):
        return varlen_call(load_varlen_attn(), q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, scale)
