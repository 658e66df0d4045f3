"""`report_to` as TRL takes it: a list, with wandb, which logs offline (WANDB_MODE=offline) with no
network: a real wandb run, whose logged values are those of the trainer's log windows."""
import glob
import os

import pytest
from helpers import make_config, read_metrics, tiny_dataset, tiny_model_and_tokenizer

pytest.importorskip("wandb", reason="report_to=wandb needs the wandb package (extra `test`)")
pytest.importorskip("tensorboard", reason="report_to=tensorboard needs the tensorboard package (extra `test`)")


def test_wandb_and_tensorboard_together_offline(tmp_path, monkeypatch):
    import wandb

    from g2rpo_fast.trainer.trainer import G2RPOTrainer

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "g2rpo-test")
    logged, runs = [], []
    real_init = wandb.init

    def init(**kwargs):  # the real run; its log calls recorded on the way
        run = real_init(**kwargs)
        runs.append((run, kwargs))
        real_log = run.log

        def log(data, step=None, **kw):
            logged.append((step, dict(data)))
            return real_log(data, step=step, **kw)

        run.log = log
        return run

    monkeypatch.setattr(wandb, "init", init)
    cfg = make_config(tmp_path, max_steps=3, logging_steps=2, report_to=["wandb", "tensorboard"], run_name="tiny",
                      log_completions=True, num_completions_to_print=0)
    model, tok = tiny_model_and_tokenizer()
    G2RPOTrainer(cfg, model=model, tokenizer=tok, train_dataset=tiny_dataset(8)).train()
    (run, kwargs), = runs
    assert kwargs["project"] == "g2rpo-test" and kwargs["name"] == "tiny" and kwargs["config"]["max_steps"] == 3
    assert run.settings.mode == "offline"
    assert glob.glob(os.path.join(cfg.output_dir, "wandb", "offline-run-*", "run-*.wandb"))
    assert glob.glob(os.path.join(cfg.output_dir, "runs", "tiny", "events.out.tfevents.*"))
    rows = read_metrics(cfg)
    scalars = [(step, data) for step, data in logged if "reward" in data]
    assert [step for step, _ in scalars] == [2, 3]  # every logging_steps, and the last step
    assert scalars[0][1]["reward"] == pytest.approx((rows[0]["reward"] + rows[1]["reward"]) / 2)
    assert scalars[1][1]["loss"] == pytest.approx(rows[2]["loss"])
    tables = [data["completions"] for _, data in logged if "completions" in data]
    assert len(tables) == 2 and tables[0].columns[:3] == ["step", "prompt", "completion"]


def test_a_missing_integration_is_named(monkeypatch):
    import importlib.util

    from g2rpo_fast.trainer.config import G2RPOConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match=r"`report_to`: wandb is not installed \(pip install wandb"):
        G2RPOConfig(report_to=["tensorboard", "wandb"])
    assert G2RPOConfig(report_to="all").report_targets == ["tensorboard"]  # every installed one
