"""The built-in model: char tokenizer, tiny Qwen3, the shipped warm-started weights and their record,
and the deterministic rebuild (at a reduced recipe)."""
from dataclasses import replace

import pytest
import torch

from g2rpo_fast.data.arithmetic import generate_problems
from g2rpo_fast.data.loading import is_embedded
from g2rpo_fast.models.builtin import BUILTIN_DIR, WEIGHTS_FILE, builtin_record, load_builtin_model, weights_digest
from g2rpo_fast.models.tiny import build_tiny_model, tiny_qwen3_config
from g2rpo_fast.models.tokenizer import build_char_tokenizer
from g2rpo_fast.models.warmstart import DEFAULT_RECIPE, EMBEDDED_MODEL_NAME, RECORD_EVAL, rebuild, record_accuracy


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


def test_shipped_weights_match_their_record_and_the_recipe():
    record = builtin_record()
    assert weights_digest(BUILTIN_DIR / WEIGHTS_FILE) == record["weights_sha256"]
    # The recipe in the code is the one the shipped weights were built from: changing it without
    # `python -m g2rpo_fast.models.warmstart --rebuild --write` fails here.
    assert record["fingerprint"] == DEFAULT_RECIPE.fingerprint()
    assert record["recipe"]["steps"] == DEFAULT_RECIPE.steps and record["heldout"] == RECORD_EVAL
    assert record["built"]["threads"] == 1 and record["built"]["deterministic_algorithms"] is True
    size = (BUILTIN_DIR / WEIGHTS_FILE).stat().st_size
    assert 1_000_000 < size < 4_000_000  # ~0.6 M fp32 parameters, the tied lm_head stored once


def test_shipped_model_gives_the_recorded_greedy_accuracy():
    """The loaded model's greedy accuracy per digit count on the fixed held-out set equals the
    number recorded when the weights were built (any machine: it is the same file)."""
    model, tokenizer = load_builtin_model()
    measured = record_accuracy(model, tokenizer)
    assert measured == builtin_record()["greedy_accuracy"]
    # The weak-policy regime the presets rely on: good on 1-2 digits, sparse on 4.
    assert measured["1"] >= 0.8 and measured["2"] >= 0.8 and measured["4"] <= 0.3


def test_embedded_name_loads_the_shipped_files_without_training(monkeypatch):
    from safetensors.torch import load_file

    import g2rpo_fast.models.warmstart as warmstart
    from g2rpo_fast.models.loading import load_model_and_tokenizer, load_tokenizer, model_context_length

    def no_training(*a, **k):
        raise AssertionError("the built-in model must load, never train")

    monkeypatch.setattr(warmstart, "warm_start", no_training)
    model, tok = load_model_and_tokenizer("embedded")
    shipped = load_file(str(BUILTIN_DIR / WEIGHTS_FILE))
    state = model.state_dict()
    for name, tensor in shipped.items():
        assert torch.equal(state[name], tensor), name
    assert model.dtype == torch.float32 and not model.training
    assert tok.get_vocab() == build_char_tokenizer().get_vocab() == load_tokenizer("embedded").get_vocab()
    assert model_context_length("embedded") == model.config.max_position_embeddings


def test_rebuild_is_deterministic_and_reports_its_digest(tmp_path):
    recipe = replace(DEFAULT_RECIPE, steps=3, batch_size=8, warmup_steps=1)
    first = rebuild(tmp_path / "a", recipe)
    second = rebuild(tmp_path / "b", recipe)
    assert first["weights_sha256"] == second["weights_sha256"] == weights_digest(tmp_path / "a" / WEIGHTS_FILE)
    assert first["fingerprint"] == recipe.fingerprint() != DEFAULT_RECIPE.fingerprint()
    other = rebuild(tmp_path / "c", replace(recipe, seed=1))
    assert other["weights_sha256"] != first["weights_sha256"]
    # The rebuilt directory loads like the shipped one.
    _, tok = load_builtin_model(tmp_path / "a")
    assert tok.encode("Q: 1+2=?\n") == build_char_tokenizer().encode("Q: 1+2=?\n")


def test_rebuild_command_says_whether_it_matches(capsys):
    from g2rpo_fast.models.warmstart import main

    assert main(["--rebuild", "--steps", "2"]) == 1  # a 2-step prefix cannot match the shipped weights
    assert "DIFFERENT" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--write"])  # --write only with --rebuild


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
