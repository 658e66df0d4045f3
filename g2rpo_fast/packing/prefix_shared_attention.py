"""Attention over a prefix-shared row (`layout.pack_groups`), and where a model can use it.

Each group's row is `[p, s_1, ..., s_G]` (s_i = completion i without its last token). The
queries of the row are cut into segments: the prompt, then each completion. The prompt attends
causally to itself; completion i attends to the whole prompt and causally to its own tokens,
never to another completion. Run as one varlen call over *gathered keys* (the metadata:
`layout.prefix_shared_attention_kwargs`):

    queries   [ p | s_1      | s_2      | ... ]          cu_seqlens_q: the row's segments
    keys      [ p | p  s_1   | p  s_2   | ... ]          cu_seqlens_k: P, P + |s_1|, ...

the prompt's K/V copied in front of each completion's own K/V (one `index_select` per layer,
`layout.gather_shared_keys`, inside the installed varlen attention of `packed_attention.py`; no
extra projection or MLP work). Every segment then has its queries at the end of its keys,
which is the varlen contract's bottom-right causal alignment (`AttentionBackend.varlen`):
flash_attn_varlen_func and torch's varlen_attn do it natively, the SDPA backends with one
masked call per segment. The copy's backward (`index_add`) sums each completion's gradient
into the prompt's K/V, so the prompt's activations get the gradient of every completion of
its group, as they would as G separate copies.

The hook into the installed varlen attention is one keyword argument,
`layout.KEY_INDEX_KWARG`: the key gather index, passed with the cu_seqlens through the
decoder's kwargs, as transformers passes `cu_seq_lens_q/k` to attention functions. This module
decides whether a model can take that path (`resolve_prefix_sharing`).
"""
from __future__ import annotations

import warnings

from .packed_attention import has_sliding_window_layers

# the model families the roll-out engine runs (rollout/model_runner.py); others fall back
SUPPORTED_FAMILIES = ("llama", "qwen2", "qwen3")


def unsupported_reason(model, varlen_installed: bool) -> str | None:
    """Why `model` cannot run the prefix-shared forward, or None when it can."""
    config = model.config
    family = getattr(config, "model_type", None)
    if family not in SUPPORTED_FAMILIES:
        return f"model type {family!r} is not one of {', '.join(SUPPORTED_FAMILIES)}"
    if has_sliding_window_layers(config):
        return "the model has sliding-window layers"
    if not varlen_installed:
        return "the packed varlen attention is not installed on the model"
    return None


def resolve_prefix_sharing(setting: str, model, varlen_installed: bool) -> bool:
    """`prefix_shared_forward` ("auto" | "true" | "false") for `model`: "true" where the model
    cannot is a ValueError naming the field; "auto" falls back to the per-sample packed
    forward with one notice."""
    if setting == "false":
        return False
    reason = unsupported_reason(model, varlen_installed)
    if reason is None:
        return True
    if setting == "true":
        raise ValueError(f"`prefix_shared_forward`=true: {reason}")
    warnings.warn(f"prefix_shared_forward=auto: off ({reason}); each completion's forward repeats its prompt",
                  RuntimeWarning, stacklevel=2)
    return False
