"""Embedded default: char tokenizer, tiny Qwen3, warm start + atomic cache (reduced steps)."""
import os
from dataclasses import replace

import pytest
import torch

from g2rpo_fast.data.arithmetic import generate_problems
from g2rpo_fast.data.loading import is_embedded
from g2rpo_fast.models.tiny import build_tiny_model, tiny_qwen3_config
from g2rpo_fast.models.tokenizer import build_char_tokenizer
from g2rpo_fast.models.warmstart import (
    CACHE_ENV_VAR,
    DEFAULT_RECIPE,
    EMBEDDED_MODEL_NAME,
    embedded_cache_path,
    load_embedded_default,
)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def test_tokenizer_round_trip_on_task_strings(tok):
    rows = generate_problems(100, seed=0, difficulties=(1, 2, 3, 4, 5))
    for r in rows:
        for s in (r["prompt"], r["solution"], r["prompt"] + r["solution"]):
            ids = tok.encode(s, add_special_tokens=False)
            assert len(ids) == len(s)  # one token per character: guidance lengths count chars
            assert tok.decode(ids) == s
    odd = "  a\tb \n\nQ: {x}=?\n#### -1,5 "
    assert tok.decode(tok.encode(odd)) == odd
    assert tok.chat_template is None
    assert tok.decode(tok.encode("12") + [tok.eos_token_id], skip_special_tokens=True) == "12"
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id}) == 4


def test_tokenizer_save_load(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    s = "Q: 473+958=?\n3+8+0=11\n#### 1431"
    assert tok2.encode(s) == tok.encode(s) and tok2.decode(tok2.encode(s)) == s
    assert (tok2.pad_token, tok2.eos_token, tok2.bos_token) == ("<pad>", "<eos>", "<bos>")


def test_tiny_model_forward(tok):
    cfg = tiny_qwen3_config(128)
    assert cfg.model_type == "qwen3" and cfg.tie_word_embeddings and cfg.head_dim == 32
    model = build_tiny_model(seed=0, tokenizer=tok)
    assert model.config.vocab_size % 8 == 0 and model.config.vocab_size >= len(tok)
    ids = torch.tensor([tok.encode("Q: 1+2=?\n")])
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    same = build_tiny_model(seed=0, tokenizer=tok)
    assert torch.equal(same(input_ids=ids).logits, logits)


def test_is_embedded():
    assert is_embedded("embedded") and is_embedded(EMBEDDED_MODEL_NAME) and is_embedded(None)
    assert is_embedded("arithmetic") and is_embedded(" embedded ")  # one check for datasets and models
    assert not is_embedded("Qwen/Qwen3-0.6B")


def test_warm_start_caches_atomically(tmp_path, monkeypatch):
    recipe = replace(DEFAULT_RECIPE, steps=3, batch_size=8, warmup_steps=1)
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    path = embedded_cache_path(recipe=recipe)
    assert path.parent == tmp_path and path.name.startswith("embedded-")
    model, tok = load_embedded_default(recipe=recipe)
    assert (path / "g2rpo_fast_embedded.json").exists()
    # No temporary directories left beside the result.
    assert sorted(os.listdir(tmp_path)) == [path.name]
    model2, tok2 = load_embedded_default(recipe=recipe)  # from cache
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    assert tok2.encode("Q: 1+2=?\n") == tok.encode("Q: 1+2=?\n")
    # Deterministic: retraining gives the same weights.
    model3, _ = load_embedded_default(tmp_path / "other", recipe=recipe)
    for a, b in zip(model.state_dict().values(), model3.state_dict().values()):
        assert torch.equal(a, b)
    # Different recipe -> different cache directory.
    assert embedded_cache_path(tmp_path, replace(recipe, steps=4)) != path


def test_evaluate_report_shape(tok):
    from g2rpo_fast.models.warmstart import evaluate, heldout_eval_set

    model = build_tiny_model(seed=0, tokenizer=tok, hidden_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                             intermediate_size=32)
    ds = heldout_eval_set(2, levels=(1, 2))
    out = evaluate(model, tok, ds, num_samples=2, guidance_tokens=5, max_new_tokens=4)
    assert sorted(out) == [1, 2]
    for m in out.values():
        assert m["n"] == 2 and 0.0 <= m["greedy_acc"] <= 1.0 and "pass@2" in m
