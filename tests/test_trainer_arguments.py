"""`G2RPOTrainer` takes TRL's arguments: a model as a path or a module, its own tokenizer, the
user's data and nothing of the built-in task behind their back; contradictions are refused by name
before anything loads."""
import dataclasses
import json
import os
import shutil

import pytest
from helpers import digit_fraction_reward, tiny_dataset

from g2rpo_fast.trainer.config import G2RPOConfig
from g2rpo_fast.trainer.trainer import G2RPOTrainer

THINK = ["<think>", "</think>"]  # tokens the built-in character tokenizer does not have


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    """A tiny Qwen3 saved with a tokenizer of its own (the char tokenizer plus two added tokens)."""
    from g2rpo_fast.models.tiny import build_tiny_model
    from g2rpo_fast.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    tok.add_tokens(THINK, special_tokens=True)
    model = build_tiny_model(0, tokenizer=tok, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, head_dim=16, intermediate_size=64, max_position_embeddings=1024)
    path = str(tmp_path_factory.mktemp("own") / "model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), num_generations=2, per_device_train_batch_size=4,
                max_completion_length=4, max_steps=1, guidance_initial_length=2, guidance_max_length=4,
                guidance_ratio=0.5, eval_at_end=False, plots=False, progress_bar=False, learning_rate=1e-3)
    base.update(kw)
    return G2RPOConfig(**base)


def test_trl_form_with_a_model_path_uses_the_models_own_tokenizer(own_model, tmp_path):
    cfg = args(tmp_path)
    trainer = G2RPOTrainer(model=own_model, reward_funcs=digit_fraction_reward, args=cfg,
                           train_dataset=tiny_dataset(8))
    tok = trainer.tokenizer
    assert tok.name_or_path == own_model
    # the added tokens exist only in the model's own tokenizer, not in the built-in one
    assert len(tok.encode("<think>", add_special_tokens=False)) == 1
    from g2rpo_fast.models.builtin import load_builtin_model

    assert len(load_builtin_model()[1].encode("<think>", add_special_tokens=False)) == 7
    assert trainer.config.model_name_or_path == own_model and trainer.args is trainer.config
    assert cfg.model_name_or_path is None and cfg.reward_funcs == ["accuracy"]  # the caller's args untouched
    assert trainer.config.reward_funcs == [digit_fraction_reward]
    assert trainer.train()[-1]["step"] == 1


def test_a_module_brings_the_tokenizer_saved_beside_it(own_model, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(own_model)
    trainer = G2RPOTrainer(model, [digit_fraction_reward], args=args(tmp_path), train_dataset=tiny_dataset(8))
    assert trainer.tokenizer.name_or_path == own_model
    assert len(trainer.tokenizer.encode("</think>", add_special_tokens=False)) == 1


def test_a_module_without_a_tokenizer_to_load_is_refused_naming_both(tmp_path):
    from helpers import tiny_model_and_tokenizer

    model, _ = tiny_model_and_tokenizer()  # built from a config: no path, no tokenizer files
    with pytest.raises(ValueError, match=r"`processing_class`: the `model` \(Qwen3ForCausalLM\) was not loaded "
                                         r"from a path or hub name"):
        G2RPOTrainer(model, digit_fraction_reward, args=args(tmp_path), train_dataset=tiny_dataset(8))


def test_a_tokenizer_larger_than_the_embeddings_is_refused_before_the_weights_load(own_model, tmp_path):
    from g2rpo_fast.models.tokenizer import build_char_tokenizer

    broken = tmp_path / "model"
    shutil.copytree(own_model, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")  # never read
    big = build_char_tokenizer()
    big.add_tokens([f"<extra_{i}>" for i in range(40)])
    with pytest.raises(ValueError, match=r"`processing_class`: the tokenizer has 141 tokens but .* embeds only 104"):
        G2RPOTrainer(str(broken), digit_fraction_reward, args=args(tmp_path), train_dataset=tiny_dataset(8),
                     processing_class=big)


@pytest.mark.parametrize("case", ["model", "model module", "config and args", "tokenizer", "reward_funcs",
                                  "train_dataset", "eval_dataset"])
def test_contradicting_keywords_and_args_are_refused_naming_both(own_model, tmp_path, case):
    from helpers import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer()
    cfg = args(tmp_path)
    named = dataclasses.replace(cfg, model_name_or_path=own_model)
    other_tok = tok.__class__.from_pretrained(own_model)
    calls = {
        "model": (lambda: G2RPOTrainer("/some/other/model", args=named),
                  r"`model` \('/some/other/model'\) and `args.model_name_or_path`"),
        "model module": (lambda: G2RPOTrainer(model, args=named),
                         r"`model` \(a Qwen3ForCausalLM built in memory\) and `args.model_name_or_path`"),
        "config and args": (lambda: G2RPOTrainer(cfg, model=model, args=dataclasses.replace(cfg)),
                            r"`config` and `args` are two different configurations"),
        "tokenizer": (lambda: G2RPOTrainer(cfg, model=model, tokenizer=tok, processing_class=other_tok),
                      r"`processing_class` and `tokenizer` are two different tokenizers"),
        "reward_funcs": (lambda: G2RPOTrainer(model, digit_fraction_reward,
                                              args=dataclasses.replace(cfg, reward_funcs=["format"])),
                         r"`reward_funcs` \(\['digit_fraction_reward'\]\) and `args.reward_funcs` \(\['format'\]\)"),
        "train_dataset": (lambda: G2RPOTrainer(model, args=dataclasses.replace(cfg, dataset_name="embedded"),
                                               train_dataset=tiny_dataset(4)),
                          r"`train_dataset` and `args.dataset_name` \('embedded'\)"),
        "eval_dataset": (lambda: G2RPOTrainer(model, args=dataclasses.replace(cfg, eval_dataset_name="x.jsonl"),
                                              train_dataset=tiny_dataset(4), eval_dataset=tiny_dataset(4)),
                         r"`eval_dataset` and `args.eval_dataset_name` \('x.jsonl'\)"),
    }
    call, message = calls[case]
    with pytest.raises(ValueError, match=message):
        call()


def test_a_users_model_never_trains_on_the_built_in_task_unless_asked(own_model, tmp_path):
    with pytest.raises(ValueError, match=r"`train_dataset`: no data to train .*model on: pass train_dataset"):
        G2RPOTrainer(own_model, digit_fraction_reward, args=args(tmp_path))
    # named explicitly, it is the user's choice, with the user's tokenizer
    trainer = G2RPOTrainer(own_model, digit_fraction_reward, args=args(tmp_path, dataset_name="embedded",
                                                                      embedded_train_size=8, embedded_eval_size=4))
    assert trainer.tokenizer.name_or_path == own_model and len(trainer.train_dataset) == 8


def write_jsonl(path, rows):
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return str(path)


def test_held_out_rows_come_from_the_users_data_only(own_model, tmp_path):
    """A train_dataset alone is not evaluated (nothing is borrowed from the built-in task); a
    single local file has no held-out split; a directory's test file is one; eval_dataset and
    eval_dataset_name are used as given; evaluating on the training rows warns."""
    train = tiny_dataset(8)
    run = args(tmp_path, eval_at_end=True)
    assert G2RPOTrainer(own_model, digit_fraction_reward, args=run, train_dataset=train).eval_dataset is None

    held = tiny_dataset(4, split="eval")
    trainer = G2RPOTrainer(own_model, digit_fraction_reward, args=run, train_dataset=train, eval_dataset=held)
    assert trainer.eval_dataset is held

    single = write_jsonl(tmp_path / "rows.jsonl", train)
    trainer = G2RPOTrainer(own_model, digit_fraction_reward, args=dataclasses.replace(run, dataset_name=single))
    assert trainer.eval_dataset is None and len(trainer.train_dataset) == 8
    with pytest.raises(ValueError, match=r"`eval_split`: .*rows.jsonl has no split 'test' \(its splits: \['train'\]\); "
                                         r"give the held-out rows as eval_dataset_name"):
        G2RPOTrainer(own_model, digit_fraction_reward, args=dataclasses.replace(run, dataset_name=single,
                                                                              eval_split="test"))
    with pytest.warns(RuntimeWarning, match="the evaluation set is the training set"):
        G2RPOTrainer(own_model, digit_fraction_reward,
                     args=dataclasses.replace(run, dataset_name=single, eval_dataset_name=single))
    with pytest.warns(RuntimeWarning, match="the evaluation set is the training set"):
        G2RPOTrainer(own_model, digit_fraction_reward, args=run, train_dataset=train, eval_dataset=train)

    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "test.jsonl", held)
    trainer = G2RPOTrainer(own_model, digit_fraction_reward, args=dataclasses.replace(run, dataset_name=str(folder)))
    assert [r["prompt"] for r in trainer.eval_dataset] == [r["prompt"] for r in held]
    assert [r["prompt"] for r in trainer.train_dataset] == [r["prompt"] for r in train]

    other = write_jsonl(tmp_path / "other.jsonl", held)
    trainer = G2RPOTrainer(own_model, digit_fraction_reward,
                           args=dataclasses.replace(run, dataset_name=single, eval_dataset_name=other))
    assert [r["prompt"] for r in trainer.eval_dataset] == [r["prompt"] for r in held]


def test_model_init_kwargs_reach_from_pretrained(own_model, tmp_path, monkeypatch):
    import transformers

    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(name, **kwargs):
        seen.update(kwargs)
        return real(name, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    G2RPOTrainer(own_model, digit_fraction_reward, train_dataset=tiny_dataset(8),
                 args=args(tmp_path, model_init_kwargs={"attn_implementation": "eager", "revision": "main"}))
    assert seen["attn_implementation"] == "eager" and seen["revision"] == "main"
    assert seen["trust_remote_code"] is False


def test_no_model_and_no_args_is_the_built_in_run():
    """`G2RPOTrainer()` is `g2rpo-fast train`: the built-in preset, model and task."""
    trainer = G2RPOTrainer()
    assert trainer.config == G2RPOConfig.from_yaml(None)
    assert len(trainer.train_dataset) == trainer.config.embedded_train_size
    assert trainer.eval_dataset is not None  # the built-in task has its held-out split


def test_args_none_gets_trl_defaults_and_an_output_dir_named_after_the_model(own_model):
    trainer = G2RPOTrainer(own_model, digit_fraction_reward, train_dataset=tiny_dataset(8))
    assert trainer.config.output_dir == "model-G2RPO"
    assert os.path.basename(own_model) == "model"
