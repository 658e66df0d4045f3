"""`g2rpo-fast` train / resume / eval / demo on a tiny local model and a local jsonl dataset."""
import json
import os

import pytest
from helpers import eval_file

from g2rpo_fast.cli import main

REWARD = "helpers:digit_fraction_reward"


@pytest.fixture
def assets(tiny_local_assets):
    return tiny_local_assets


def common(assets, out):
    model, data = assets
    return ["--model-name-or-path", model, "--dataset-name", data, "--eval-dataset-name", eval_file(data),
            "--output-dir", str(out),
            "--num-generations", "2", "--per-device-train-batch-size", "4", "--max-completion-length", "6",
            "--guidance-initial-length", "3", "--guidance-max-length", "6", "--guidance-ratio", "0.5",
            "--reward-funcs", f"[{REWARD}, accuracy]", "--learning-rate", "1e-3", "--num-eval-prompts", "3",
            "--eval-num-samples", "2", "--progress-bar", "false"]


def rows(out):
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        return [json.loads(x) for x in fh if x.strip()]


def test_train_resume_eval(assets, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *common(assets, out), "--max-steps", "2", "--save-steps", "1"]) == 0
    assert [r["step"] for r in rows(out)] == [1, 2]
    assert os.path.isfile(out / "training_curves.png")
    assert os.path.isfile(out / "eval_results.json")
    assert main(["train", *common(assets, out), "--max-steps", "3", "--resume"]) == 0
    assert [r["step"] for r in rows(out)] == [1, 2, 3]
    assert os.path.isdir(out / "checkpoint-3")
    capsys.readouterr()
    assert main(["eval", *common(assets, out), "--checkpoint", str(out / "checkpoint-3")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["eval_accuracy"] <= 1.0 and result["eval_count"] == 3


def test_eval_of_a_users_checkpoint_never_falls_back_to_the_built_in_task(assets, tmp_path, capsys):
    """`eval --checkpoint` alone, on a checkpoint of the user's model: no built-in preset and no
    built-in arithmetic task behind the user's back; the data to evaluate on must be named."""
    out = tmp_path / "run"
    assert main(["train", *common(assets, out), "--max-steps", "1", "--eval-at-end", "false",
                 "--plots", "false"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "checkpoint-1"), "--max-prompts", "2"]) == 2
    err = capsys.readouterr().err
    assert "`dataset_name`" in err and "checkpoint-1" in err and len(err.strip().splitlines()) == 1


def test_resume_without_checkpoint_fails(assets, tmp_path, capsys):
    assert main(["train", *common(assets, tmp_path / "empty"), "--max-steps", "1", "--resume"]) == 2
    assert "resume" in capsys.readouterr().err


def test_demo_writes_table_and_plot(assets, tmp_path, capsys):
    out = tmp_path / "demo"
    args = common(assets, out)
    assert main(["demo", *args, "--max-steps", "1", "--seeds", "0", "1", "--methods", "none", "adaptive"]) == 0
    table = (out / "demo_results.md").read_text()
    assert "G²RPO-A" in table and "GRPO (no guidance)" in table and "±" in table
    assert "Against GRPO, seed by seed" in table
    result = json.loads((out / "demo_results.json").read_text())
    runs = result["runs"]
    test = result["summary"]["adaptive"]["vs_grpo_eval_accuracy"]
    diffs = [a["eval_accuracy"] - g["eval_accuracy"] for a, g in zip(runs["adaptive"], runs["none"])]
    assert test["n"] == 2 and test["diff"] == pytest.approx(sum(diffs) / 2)
    assert [r["seed"] for r in runs["adaptive"]] == [0, 1] and result["timing"]["threads"] == (os.cpu_count() or 1)
    assert os.path.isfile(out / "demo.png")
    # --resume reuses identical runs (nothing trains again), a changed config does not
    capsys.readouterr()
    assert main(["demo", *args, "--max-steps", "1", "--seeds", "0", "1", "--methods", "none", "adaptive",
                 "--resume"]) == 0
    again = json.loads((out / "demo_results.json").read_text())
    assert again["timing"]["runs_reused"] == 4 and again["summary"] == result["summary"]
    assert main(["demo", *args, "--max-steps", "2", "--seeds", "0", "--methods", "none", "--resume"]) == 0
    assert json.loads((out / "demo_results.json").read_text())["timing"]["runs_reused"] == 0


def test_demo_hard_regime_tiny_budget(assets, tmp_path):
    """`demo --regime hard`: the hard preset (4-digit sums of the built-in task), GRPO, DAPO's
    dynamic sampling and the sparse variant, two runs at a time with one thread each; the tiny
    model stands in for the built-in one."""
    model, _ = assets
    out = tmp_path / "hard"
    methods = ["none", "dapo", "adaptive_sparse"]
    assert main(["demo", "--regime", "hard", "--model-name-or-path", model, "--output-dir", str(out),
                 "--max-steps", "2", "--seeds", "0", "--jobs", "2", "--threads", "1", "--num-generations", "2",
                 "--per-device-train-batch-size", "4", "--max-completion-length", "6", "--embedded-train-size", "8",
                 "--embedded-eval-size", "3", "--eval-num-samples", "2", "--learning-rate", "1e-3",
                 "--guidance-ratio", "0.5", "--methods", *methods]) == 0
    result = json.loads((out / "demo_results.json").read_text())
    assert result["regime"] == "hard" and result["timing"]["jobs"] == 2 and result["timing"]["threads"] == 1
    assert result["config"]["embedded_difficulties"] == [4] and result["config"]["dataset_name"] == "embedded"
    assert list(result["runs"]) == methods
    schedule = {"none": "none", "dapo": "none", "adaptive_sparse": "adaptive_sparse"}
    for method, runs in result["runs"].items():
        (run,) = runs
        assert len(run["curves"]["frac_reward_zero_std"]) == 2 and len(run["curves"]["reward"]) == 2
        assert 0.0 <= run["eval_accuracy"] <= 1.0 and 0.0 <= run["eval_sampled_accuracy"] <= 1.0
        config = json.loads((out / f"{method}-seed0" / "config.json").read_text())
        assert config["guidance_schedule"] == schedule[method] and config["embedded_difficulties"] == [4]
        assert config["dynamic_sampling"] == (method == "dapo")
        assert json.loads((out / f"{method}-seed0" / "eval_results.json").read_text())["eval_count"] == 3
        rounds = run["curves"]["sampling_rounds"]
        assert run["completions_generated"] == 4 * sum(rounds)
        assert rounds == [1, 1] if method != "dapo" else all(1 <= r <= 4 for r in rounds)
    assert result["runs"]["none"][0]["curves"]["guidance_length_injected"] == [0.0, 0.0]
    table = (out / "demo_results.md").read_text()
    assert "hard regime" in table and "DAPO dynamic sampling" in table and "zero-std groups" in table
    assert "before training" in table and 0.0 <= result["start"]["eval_accuracy"] <= 1.0
    assert os.path.isfile(out / "demo.png")


def test_demo_jobs_below_one_is_a_usage_error(capsys):
    assert main(["demo", "--jobs", "0"]) == 2
    assert "`jobs` must be an int >= 1" in capsys.readouterr().err
