"""The packed training forward's varlen attention: no [ΣL, ΣL] mask is built (transformers'
mask creation returns None for it), peak memory grows linearly in the row length, and the
registered implementation stays exact where a real padding mask exists (HF generate)."""
from __future__ import annotations

import ctypes
import ctypes.util
import gc

import pytest
import torch
from helpers import tiny_model_and_tokenizer

from g2rpo_fast.packing import packed_attention
from g2rpo_fast.packing.policy_forward import PolicyHidden
from g2rpo_fast.rollout.backends import BACKENDS


def _packed_row(lengths, vocab=90, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (1, sum(lengths)), generator=g)
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    return ids, pos


def test_no_dense_mask_for_the_packed_row(monkeypatch):
    """transformers keys mask creation on config._attn_implementation: for the registered name
    the mask function returns None, HF's sdpa/eager mask builders never run, and every layer's
    attention gets the row's cu_seqlens instead of a mask."""
    from transformers import masking_utils

    model, _ = tiny_model_and_tokenizer()
    assert packed_attention.install(model, BACKENDS["cpu"]())

    def forbidden(*args, **kwargs):
        raise AssertionError("a dense mask was built for the packed row")

    for name in ("sdpa_mask", "eager_mask"):
        monkeypatch.setattr(masking_utils, name, forbidden)
    monkeypatch.setitem(masking_utils.AttentionMaskInterface._global_mapping, "sdpa", forbidden)
    seen = []
    inner = packed_attention.varlen_attention_forward

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append((attention_mask, kwargs.get("cu_seq_lens_q")))
        return inner(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setitem(masking_utils.ALL_MASK_ATTENTION_FUNCTIONS._global_mapping, "sdpa", forbidden)
    from transformers import AttentionInterface

    monkeypatch.setitem(AttentionInterface._global_mapping, packed_attention.ATTN_IMPLEMENTATION, spy)
    ids, pos = _packed_row([7, 3, 12, 1])
    hidden = PolicyHidden(model)(ids, pos)
    assert hidden.shape == (1, 23, model.config.hidden_size)
    assert len(seen) == model.config.num_hidden_layers
    assert all(mask is None and cu.tolist() == [0, 7, 10, 22, 23] for mask, cu in seen)


def test_padded_generate_keeps_its_mask():
    """With a real padding mask (left-padded `generate`), the registered implementation builds
    HF's SDPA mask and gives what HF's own sdpa gives; cached decode steps (one query, many
    keys) take the varlen path with bottom-right causality."""
    model, _ = tiny_model_and_tokenizer()
    reference, _ = tiny_model_and_tokenizer()  # same seed, HF sdpa
    packed_attention.install(model, BACKENDS["sdpa"]())
    ids = torch.tensor([[0, 0, 0, 11, 12, 13], [21, 22, 23, 24, 25, 26]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None,
              temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        assert torch.equal(model.generate(ids, **kw), reference.generate(ids, **kw))
        single = torch.tensor([[31, 32, 33, 34]])
        one = dict(kw, attention_mask=None)
        assert torch.equal(model.generate(single, **one), reference.generate(single, **one))


# ------------------------------------------------------------------------------- peak memory

def _proc_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _extra_peak_bytes(total_tokens: int, attention: str, seq_len: int = 512) -> int:
    """Peak RSS beyond the baseline of one packed forward + backward of ΣL tokens (sequences
    of `seq_len`). Freed heap is handed back to the OS first (malloc_trim) and the peak is reset
    (writing 5 to /proc/self/clear_refs resets VmHWM), so earlier work in this process does
    not hide this one's pages."""
    torch.manual_seed(0)
    model, _ = tiny_model_and_tokenizer(hidden_size=64, layers=2)
    if attention == "varlen":
        packed_attention.install(model, BACKENDS["cpu"]())
    policy = PolicyHidden(model)
    ids, pos = _packed_row([seq_len] * (total_tokens // seq_len), seed=1)
    gc.collect()
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    base = _proc_kib("VmRSS:")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    policy(ids, pos).float().pow(2).mean().backward()
    return _proc_kib("VmHWM:") - base


@pytest.mark.skipif(not _can_reset_peak_rss(), reason="needs Linux /proc/self/clear_refs to reset the peak RSS")
def test_peak_memory_linear_in_row_length():
    """ΣL = 32k tokens needs < 2.5x the extra memory of ΣL = 16k with the varlen attention (a
    dense [ΣL, ΣL] mask alone would be 1 GiB of bool at 32k, 4x that of 16k). Control: HF's sdpa
    with the block-diagonal mask grows faster than 2.5x from 2k to 4k tokens, so the
    measurement does tell linear from quadratic."""
    small, large = _extra_peak_bytes(16384, "varlen"), _extra_peak_bytes(32768, "varlen")
    assert large < 2.5 * small, {"16k": small, "32k": large}
    dense_small, dense_large = _extra_peak_bytes(2048, "sdpa"), _extra_peak_bytes(4096, "sdpa")
    assert dense_large > 2.5 * dense_small, {"dense 2k": dense_small, "dense 4k": dense_large}


def test_setup_pins_the_transformers_the_code_needs():
    """setup.py's minimum is the version whose masking_utils has what packed_attention uses."""
    import importlib.metadata
    import pathlib
    import re

    from packaging.version import Version

    setup = (pathlib.Path(__file__).parents[1] / "setup.py").read_text()
    assert re.findall(r'"transformers>=([\d.]+)"', setup) == [packed_attention.MIN_TRANSFORMERS]
    assert Version(importlib.metadata.version("transformers")) >= Version(packed_attention.MIN_TRANSFORMERS)
    packed_attention.masking_utils()  # the installed one has it


@pytest.mark.parametrize("missing", ["find_packed_sequence_indices", "module"])
def test_too_old_transformers_is_named(monkeypatch, missing):
    """transformers 4.53.0 (no packed-row detection) or 4.52 (no masking_utils at all): an
    ImportError naming the requirement, before any model is touched."""
    import sys

    import transformers
    from transformers import masking_utils

    if missing == "module":
        monkeypatch.setitem(sys.modules, "transformers.masking_utils", None)
        monkeypatch.delattr(transformers, "masking_utils", raising=False)
    else:
        monkeypatch.delattr(masking_utils, missing)
    model, _ = tiny_model_and_tokenizer()
    need = rf"transformers>={packed_attention.MIN_TRANSFORMERS}.*installed: transformers"
    with pytest.raises(ImportError, match=need):
        packed_attention.install(model, BACKENDS["cpu"]())
