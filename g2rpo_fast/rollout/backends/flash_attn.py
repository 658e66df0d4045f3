"""`flash_attn`: the flash-attn package (CUDA sm80+, fp16/bf16).

- cache: the head-major, 16-token-block cache of the other backends (not flash-attn's paged
  layout, whose pages must be multiples of 256 tokens: only full blocks before a prompt's last
  token are shared, so the G samples of a group would share nothing of a 100-250-token prompt);
- prefill: `flash_attn_varlen_func` over this step's K/V; when some prompt tokens come from
  shared blocks, each sequence's cached K/V is gathered in front of its new K/V and the keys
  span [cached + new] (`cu_seqlens_k`), the queries being its last positions (flash-attn >= 2.1
  aligns causal masks bottom-right);
- decode: the paged decode kernel of the other CUDA backends (`ops.paged_decode_attention`),
  reading the cache in place;
- training forward (`varlen`): `flash_attn_varlen_func` (with its backward).

The package is imported once per process (`_import_flash_attn`): an installed flash-attn that
does not import (a wheel built for another torch: "undefined symbol ...") is reported as the
reason this backend cannot run, so `auto` skips it and an explicit request names the error.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util

from .base import AMPERE, HALF_DTYPES
from .gather import context_slots, gather_context
from .sdpa import SdpaBackend

REQUIRED_FUNCTIONS = ("flash_attn_varlen_func",)  # all this backend calls


@functools.lru_cache(maxsize=1)
def _import_flash_attn():
    """(module, None), or (None, why it cannot be used); imported once per process."""
    try:
        found = importlib.util.find_spec("flash_attn") is not None
    except (ImportError, ValueError) as exc:
        return None, f"flash-attn cannot be located: {type(exc).__name__}: {exc}"
    if not found:
        return None, "the flash-attn package is not installed"
    try:
        module = importlib.import_module("flash_attn")
    except Exception as exc:  # ImportError ("undefined symbol": built for another torch), OSError, ...
        return None, f"flash-attn is installed but does not import ({type(exc).__name__}: {exc})"
    missing = [name for name in REQUIRED_FUNCTIONS if not callable(getattr(module, name, None))]
    if missing:
        version = getattr(module, "__version__", "?")
        return None, f"flash-attn {version} has no {', '.join(missing)} (flash-attn >= 2.6 is needed)"
    return module, None


def flash_attn_problem() -> str | None:
    """Why flash-attn cannot be used here, or None."""
    return _import_flash_attn()[1]


def has_flash_attn() -> bool:
    return flash_attn_problem() is None


def load_flash_attn():
    """The flash_attn module (a function so tests can substitute a stand-in)."""
    module, problem = _import_flash_attn()
    if module is None:
        raise ImportError(problem)
    return module


class FlashAttnBackend(SdpaBackend):
    name = "flash_attn"
    dtypes = HALF_DTYPES
    needs_cuda = True
    min_capability = AMPERE

    @classmethod
    def missing_dependency(cls):
        if has_flash_attn():
            return None
        return flash_attn_problem() or "the flash-attn package is not installed"

    def prepare(self, meta, seqs, k_cache, v_cache) -> None:
        if meta.is_prefill and meta.has_cached:
            meta.extra = context_slots(meta)  # built once per step, used by every layer

    def attend(self, q, k, v, k_cache, v_cache, meta, layer):
        if not meta.is_prefill:
            return super().attend(q, k, v, k_cache, v_cache, meta, layer)  # the paged decode kernel
        self.store_kv(k, v, k_cache, v_cache, meta)
        if meta.has_cached:  # keys = each sequence's whole context, read back from the cache
            k, v = gather_context(k_cache, meta.extra), gather_context(v_cache, meta.extra)
        return self.varlen(q, k, v, meta.cu_seqlens_q, meta.cu_seqlens_k, meta.max_q, meta.max_k, meta.scale)

    def varlen(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, scale):
        return load_flash_attn().flash_attn_varlen_func(
            q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_q,
            max_seqlen_k=max_k, softmax_scale=scale, causal=True)
