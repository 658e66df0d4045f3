"""Varlen attention for the packed training forward, registered with transformers.

The trainer packs every completion of a micro-batch into one row (`layout.py`). With
HF's default attention, transformers turns that row's position ids into a dense block-diagonal
`[ΣL, ΣL]` mask (masking_utils: `find_packed_sequence_indices`, then `sdpa_mask`), whose memory
and attention work grow as ΣL². Here one attention function is registered under the name
`ATTN_IMPLEMENTATION` and set on the model's config:

- the *attention* function runs a rollout backend's `varlen` (flash_attn_varlen_func, torch's
  varlen_attn, or SDPA over length-grouped sequences; see `g2rpo_fast.rollout.backends`) over `cu_seqlens`
  taken from the kwargs (`PolicyHidden` passes the row's, `layout.py`) or derived here from
  `position_ids`; the keys of a prefix-shared row are gathered first (`layout.gather_shared_keys`);
- the *mask* function registered under the same name returns None whenever no padding mask
  was given, so transformers never builds the dense mask for the packed row. (Mask creation is
  keyed on `config._attn_implementation`; an unregistered name would also skip it, but would
  then silently drop real padding masks too.) With a padding mask (e.g. `generate` on a padded
  batch) the mask is HF's `sdpa_mask` and attention is HF's SDPA: exact, just not varlen.

Models with sliding-window layers keep their own attention (`install` returns False), and then
rely on transformers' own packed-row detection (`find_packed_sequence_indices`, 4.53.1).
Hence `MIN_TRANSFORMERS`: `masking_utils` appeared in 4.53.0, that detection in 4.53.1 (4.53.0
would attend across the packed sequences of such a model without a word).
"""
from __future__ import annotations

import torch

from .layout import cu_seqlens_from_position_ids, gather_shared_keys

ATTN_IMPLEMENTATION = "g2rpo_varlen"
_BACKEND_ATTR = "_g2rpo_attention_backend"
MIN_TRANSFORMERS = "4.53.1"  # keep equal to setup.py's pin (tests/test_packing_attention.py checks)


def masking_utils():
    """`transformers.masking_utils` with what the packed forward needs, or an ImportError that
    names the requirement."""
    try:
        from transformers import masking_utils as module

        for name in ("AttentionMaskInterface", "sdpa_mask", "find_packed_sequence_indices"):
            getattr(module, name)
    except (ImportError, AttributeError) as exc:
        import transformers

        raise ImportError(f"g2rpo_fast's packed training forward needs transformers>={MIN_TRANSFORMERS} "
                          f"(transformers.masking_utils with find_packed_sequence_indices); installed: "
                          f"transformers {transformers.__version__} ({exc}). "
                          f"Upgrade: pip install 'transformers>={MIN_TRANSFORMERS}'") from exc
    return module


def _compute_dtype(query: torch.Tensor) -> torch.dtype:
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return query.dtype


def varlen_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention signature: query [B, Hq, Lq, D], key/value [B, Hkv, Lk, D] ->
    ([B, Lq, Hq, D], None). Causal within each packed sequence; bottom-right when Lq < Lk."""
    if attention_mask is not None:  # a padding mask was built (mask function below): HF's SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if kwargs.get("sliding_window") is not None:
        raise ValueError(f"attn_implementation={ATTN_IMPLEMENTATION!r} has no sliding-window attention")
    if dropout:
        raise ValueError(f"attn_implementation={ATTN_IMPLEMENTATION!r} has no attention dropout")
    from g2rpo_fast.rollout.backends import SdpaBackend

    backend = getattr(module, _BACKEND_ATTR, None) or SdpaBackend()
    batch, num_q_heads, q_len, head_dim = query.shape
    k_len = key.shape[2]
    scale = scaling if scaling is not None else head_dim ** -0.5
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None and batch == 1 and q_len == k_len:
        max_q, max_k = kwargs["max_length_q"], kwargs["max_length_k"]
    elif kwargs.get("position_ids") is not None and batch == 1 and q_len == k_len:
        cu_q, max_q = cu_seqlens_from_position_ids(kwargs["position_ids"])
        cu_k, max_k = cu_q, max_q
    else:  # one sequence per batch row (e.g. generation with a cache)
        cu_q = torch.arange(0, (batch + 1) * q_len, q_len, dtype=torch.int32, device=query.device)
        cu_k = torch.arange(0, (batch + 1) * k_len, k_len, dtype=torch.int32, device=query.device)
        max_q, max_k = q_len, k_len
    dtype = _compute_dtype(query)  # under autocast the norms hand over fp32 q/k: run the kernel in bf16
    q = query.transpose(1, 2).reshape(batch * q_len, num_q_heads, head_dim).to(dtype)
    k = key.transpose(1, 2).reshape(batch * k_len, -1, head_dim).to(dtype)
    v = value.transpose(1, 2).reshape(batch * k_len, -1, head_dim).to(dtype)
    k, v = gather_shared_keys(k, v, kwargs)  # a prefix-shared row: each completion's keys behind its prompt's
    out = backend.varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale)
    return out.view(batch, q_len, num_q_heads, head_dim), None


def varlen_mask(*args, **kwargs):
    """No mask unless a padding mask was given (then HF's SDPA mask)."""
    if kwargs.get("attention_mask") is None:
        return None
    return masking_utils().sdpa_mask(*args, **kwargs)


def register() -> None:
    mask_interface = masking_utils().AttentionMaskInterface
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, varlen_attention_forward)
    mask_interface.register(ATTN_IMPLEMENTATION, varlen_mask)


def has_sliding_window_layers(config) -> bool:
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return True
    return bool(getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None))


def install(model, backend) -> bool:
    """Make `model`'s attention the varlen function, running `backend` (a rollout backend
    instance). False, and the model untouched, when it has sliding-window layers."""
    config = model.config
    if has_sliding_window_layers(config):
        return False
    register()
    for module in model.modules():
        if hasattr(module, "scaling") and hasattr(module, "config"):  # an attention module
            setattr(module, _BACKEND_ATTR, backend)
    for sub in (config, *(getattr(config, name) for name in getattr(config, "sub_configs", {}) or {})):
        if sub is not None:
            sub._attn_implementation = ATTN_IMPLEMENTATION
    return True
