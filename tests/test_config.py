"""G2RPOConfig: YAML + overrides, and every bad value refused with a ValueError naming the field."""
import dataclasses
import math
import subprocess
import sys

import pytest

from g2rpo_fast.trainer.config import (
    FLOAT_RANGES,
    INT_MIN,
    G2RPOConfig,
    default_config_path,
    field_kind,
    parse_value,
)


@pytest.mark.parametrize("field,value", [
    ("guidance_ratio", 1.5), ("guidance_ratio", -0.1), ("num_generations", 1),
    ("per_device_train_batch_size", 10), ("loss_type", "ppo"), ("scale_rewards", "rank"),
    ("guidance_schedule", "cosine"), ("guidance_loss", "drop"), ("importance_sampling_level", "seq"),
    ("reward_funcs", ["no_such_reward"]), ("learning_rate", "fast"), ("max_steps", 0),
    ("bf16", "yes"), ("guidance_reward", "nope"),
    ("fsdp", "yes"), ("fsdp_cpu_offload", True),  # offloading needs fsdp: true
    ("guidance_schedule", "adaptive-sparse"), ("guidance_max_factor", 1.0), ("guidance_max_factor", float("nan")),
    ("dynamic_sampling", "yes"), ("dynamic_sampling_max_rounds", 0), ("skip_zero_signal_steps", 1),
])
def test_bad_field_named(field, value):
    kwargs = {field: value}
    if field == "per_device_train_batch_size":
        kwargs["num_generations"] = 4
    with pytest.raises(ValueError, match=field):
        G2RPOConfig(**kwargs)


def test_min_above_max_length():
    with pytest.raises(ValueError, match="guidance_min_length"):
        G2RPOConfig(guidance_min_length=10, guidance_max_length=5)
    for schedule in ("adaptive", "adaptive_sparse"):  # both rules start inside their clamp
        with pytest.raises(ValueError, match="guidance_initial_length"):
            G2RPOConfig(guidance_schedule=schedule, guidance_initial_length=40, guidance_max_length=36)
    assert G2RPOConfig(guidance_schedule="fixed", guidance_initial_length=40, guidance_max_length=36)


def test_default_yaml_and_overrides(tmp_path):
    cfg = G2RPOConfig.from_yaml()
    assert cfg.model_name_or_path == "embedded"
    assert cfg.per_device_train_batch_size % cfg.num_generations == 0
    path = tmp_path / "c.yaml"
    path.write_text("num_generations: 4\nper_device_train_batch_size: 8\nguidance_schedule: fixed\n")
    cfg = G2RPOConfig.from_yaml(str(path), max_steps=3)
    assert (cfg.num_generations, cfg.guidance_schedule, cfg.max_steps) == (4, "fixed", 3)
    assert cfg.n_guided == 1
    path.write_text("not_a_field: 1\n")
    with pytest.raises(ValueError, match="not_a_field"):
        G2RPOConfig.from_yaml(str(path))


def test_none_schedule_has_no_guided_samples():
    assert G2RPOConfig(guidance_schedule="none", guidance_ratio=0.5).n_guided == 0


def test_trainer_refuses_dataset_without_columns():
    from helpers import tiny_dataset, tiny_model_and_tokenizer

    from g2rpo_fast.trainer.trainer import G2RPOTrainer

    model, tok = tiny_model_and_tokenizer()
    ds = tiny_dataset(4)
    cfg = G2RPOConfig(num_generations=2, per_device_train_batch_size=2, max_steps=1, eval_split=None,
                      guidance_ratio=0.5, max_completion_length=8)
    renamed = ds.rename_column("solution", "worked")
    with pytest.raises(ValueError, match="`guidance_field`: the train dataset has no column 'reference'"):
        G2RPOTrainer(dataclasses.replace(cfg, guidance_field="reference"), model, tok, train_dataset=renamed)
    # TRL's data sets have no reference solutions: without the default column the run is GRPO, said once
    with pytest.warns(RuntimeWarning, match="has no 'solution' column .* training without guidance"):
        trainer = G2RPOTrainer(cfg, model, tok, train_dataset=ds.remove_columns(["solution"]))
    assert trainer.config.guidance_schedule == "none" and trainer.config.n_guided == 0
    assert cfg.guidance_schedule == "adaptive"  # the caller's config untouched
    with pytest.raises(ValueError, match="reward_funcs"):  # accuracy needs `answer`
        G2RPOTrainer(cfg, model, tok, train_dataset=ds.remove_columns(["answer"]))
    with pytest.raises(ValueError, match="prompt_field"):
        G2RPOTrainer(cfg, model, tok, train_dataset=ds.remove_columns(["prompt"]))
    with pytest.raises(ValueError, match="reward_funcs"):
        G2RPOTrainer(cfg, model, tok, train_dataset=ds, reward_funcs=["bogus"])


def test_cli_exits_nonzero_before_any_work(capsys, tmp_path):
    from g2rpo_fast.cli import main

    out = tmp_path / "out"
    assert main(["train", "--guidance-ratio", "2", "--output-dir", str(out)]) == 2
    assert "guidance_ratio" in capsys.readouterr().err
    assert main(["train", "--num-generations", "3", "--output-dir", str(out)]) == 2
    assert "per_device_train_batch_size" in capsys.readouterr().err
    assert main(["train", "--reward-funcs", "[nope]", "--output-dir", str(out)]) == 2
    assert "reward_funcs" in capsys.readouterr().err
    assert main(["train", "--guidance-min-length", "9", "--guidance-max-length", "3",
                 "--output-dir", str(out)]) == 2
    assert "guidance_min_length" in capsys.readouterr().err
    assert not out.exists()


def test_console_script_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "g2rpo_fast.cli", "train", "--guidance", "adaptive",
                           "--loss-type", "bogus", "--output-dir", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "loss_type" in proc.stderr


def test_default_config_path_exists():
    import os

    assert os.path.isfile(default_config_path())


# ---------------------------------------------------------------- every numeric field, every string field
FIELDS = {f.name: field_kind(f) for f in dataclasses.fields(G2RPOConfig)}


def test_every_numeric_field_has_a_range():
    ints = {n for n, (k, _) in FIELDS.items() if k == "int"}
    floats = {n for n, (k, _) in FIELDS.items() if k == "float"}
    assert ints == set(INT_MIN) and floats == set(FLOAT_RANGES)


def _bad_numbers():
    cases = []
    for name, (low, high, low_in, _high_in) in FLOAT_RANGES.items():
        cases += [(name, math.nan), (name, math.inf), (name, -math.inf), (name, low - 1.0 if low_in else low)]
        if high != math.inf:
            cases.append((name, high + 1.0))
    cases += [(name, low - 1) for name, low in INT_MIN.items()]
    cases += [(name, 2.5) for name in ("max_steps", "save_total_limit", "num_eval_prompts")]
    return cases


@pytest.mark.parametrize("field,value", _bad_numbers())
def test_bad_number_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        G2RPOConfig(**{field: value})


@pytest.mark.parametrize("field", sorted(n for n, (k, _) in FIELDS.items() if k == "str"))
def test_non_string_for_a_string_field_refused(field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        G2RPOConfig(**{field: 5})


@pytest.mark.parametrize("field,value", [
    ("reward_weights", [math.nan]), ("reward_weights", ["nan"]), ("reward_weights", [math.inf]),
    ("output_dir", ""), ("prompt_field", " "), ("seed", 2**64), ("embedded_difficulties", [9]),
])
def test_more_nonsense_refused(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        G2RPOConfig(**{field: value})


def test_yaml_file_mistakes_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: [1\n")
    with pytest.raises(ValueError, match=r"`--config`: .*bad.yaml is not valid YAML at line 2"):
        G2RPOConfig.from_yaml(str(bad))
    with pytest.raises(ValueError, match="`--config`: no such file"):
        G2RPOConfig.from_yaml(str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="is a directory"):
        G2RPOConfig.from_yaml(str(tmp_path))
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        G2RPOConfig.from_yaml(str(bad))
    bad.write_text("learning_rate: 1e-5\nprompt_field: 5\n")  # YAML reads 1e-5 as a string: accepted as a number
    with pytest.raises(ValueError, match="`prompt_field` must be a string"):
        G2RPOConfig.from_yaml(str(bad))
    bad.write_text("learning_rate: 1e-5\n")
    assert G2RPOConfig.from_yaml(str(bad)).learning_rate == 1e-5


def test_command_line_values_with_bad_yaml_name_the_field():
    with pytest.raises(ValueError, match=r"`reward_funcs`: .* is not valid YAML"):
        parse_value("[accuracy", "list", "reward_funcs")
    assert parse_value("inf", "float", "temperature") == math.inf  # then refused by validate()
    assert parse_value("[nan]", "list | None", "reward_weights") == ["nan"]
