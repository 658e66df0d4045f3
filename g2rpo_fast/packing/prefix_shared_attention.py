"""Attention over a prefix-shared row (`group_packing.py`), and where a model can use it.

Each group's row is `[p, s_1, ..., s_G]` (s_i = completion i without its last token). The
queries of the row are cut into segments: the prompt, then each completion. The prompt attends
causally to itself; completion i attends to the whole prompt and causally to its own tokens,
never to another completion. Run as one varlen call over *gathered keys*:

    queries   [ p | s_1      | s_2      | ... ]          cu_seqlens_q: the row's segments
    keys      [ p | p  s_1   | p  s_2   | ... ]          cu_seqlens_k: P, P + |s_1|, ...

the prompt's K/V copied in front of each completion's own K/V (one `index_select` per layer;
no extra projection or MLP work). Every segment then has its queries at the end of its keys,
which is the varlen contract's bottom-right causal alignment (`AttentionBackend.varlen`):
flash_attn_varlen_func and torch's varlen_attn do it natively, the SDPA backends with one
masked call per segment. The copy's backward (`index_add`) sums each completion's gradient
into the prompt's K/V, so the prompt's activations get the gradient of every completion of
its group, as they would as G separate copies.

The hook into the installed varlen attention (`packed_attention.py`) is one keyword argument,
`KEY_INDEX_KWARG`: the key gather index, passed with the cu_seqlens through the decoder's
kwargs, as transformers passes `cu_seq_lens_q/k` to attention functions.
"""
from __future__ import annotations

import warnings

import torch

KEY_INDEX_KWARG = "prefix_shared_key_index"
# the model families the roll-out engine runs (rollout/model_runner.py); others fall back
SUPPORTED_FAMILIES = ("llama", "qwen2", "qwen3")


def attention_kwargs(layout, start: int, end: int, device) -> dict:
    """Decoder keyword arguments for the row slice [start, end) of a prefix-shared batch:
    cu_seqlens over the query segments and over the gathered keys, and the gather index."""
    q_lens, k_lens, runs = [], [], []  # runs: (first row index, length) of contiguous keys
    from .group_packing import groups_in

    for offset, prompt_len, segments in groups_in(layout, start, end):
        prompt = (offset - start, prompt_len)
        q_lens.append(prompt_len)
        k_lens.append(prompt_len)
        runs.append(prompt)
        own = offset - start + prompt_len
        for length in segments:
            if length:  # a one-token completion has no segment: the prompt's last state predicts it
                q_lens.append(length)
                k_lens.append(prompt_len + length)
                runs += [prompt, (own, length)]
            own += length
    run_start = torch.tensor([r[0] for r in runs], dtype=torch.long)
    run_len = torch.tensor([r[1] for r in runs], dtype=torch.long)
    # index = run start + offset within the run, without a Python loop over tokens
    run_first = torch.cumsum(run_len, 0) - run_len
    total = int(run_len.sum())
    key_index = torch.repeat_interleave(run_start - run_first, run_len, output_size=total) + torch.arange(total)
    cu_q = torch.tensor([0, *q_lens], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    cu_k = torch.tensor([0, *k_lens], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return {"cu_seq_lens_q": cu_q.to(device), "cu_seq_lens_k": cu_k.to(device), "max_length_q": max(q_lens),
            "max_length_k": max(k_lens), KEY_INDEX_KWARG: key_index.to(device)}


def gather_shared_keys(key: torch.Tensor, value: torch.Tensor, kwargs: dict):
    """Packed key/value [T, Hkv, D] -> the gathered keys of `attention_kwargs` (unchanged when
    the forward is not prefix-shared)."""
    index = kwargs.get(KEY_INDEX_KWARG)
    if index is None:
        return key, value
    return key.index_select(0, index), value.index_select(0, index)


def unsupported_reason(model, varlen_installed: bool) -> str | None:
    """Why `model` cannot run the prefix-shared forward, or None when it can."""
    config = model.config
    family = getattr(config, "model_type", None)
    if family not in SUPPORTED_FAMILIES:
        return f"model type {family!r} is not one of {', '.join(SUPPORTED_FAMILIES)}"
    from .packed_attention import has_sliding_window_layers

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
