"""`report_to="tensorboard"`: every numeric metric of metrics.jsonl is a TensorBoard scalar under
output_dir/runs/, read back with tensorboard's own EventAccumulator."""
from __future__ import annotations

import glob
import json
import math
import os

import pytest

from g2rpo_fast.cli import main
from g2rpo_fast.trainer.config import G2RPOConfig

pytest.importorskip("tensorboard", reason="report_to=tensorboard needs the tensorboard package (extra `test`)")


def _scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_cli_report_to_tensorboard_writes_every_metric(tiny_local_assets, tmp_path):
    model, data = tiny_local_assets
    out = tmp_path / "tb"
    assert main(["train", "--model-name-or-path", model, "--dataset-name", data, "--output-dir", str(out),
                 "--num-generations", "2", "--per-device-train-batch-size", "4", "--max-completion-length", "6",
                 "--guidance-initial-length", "3", "--guidance-max-length", "6", "--guidance-ratio", "0.5",
                 "--learning-rate", "1e-3", "--eval-at-end", "false", "--progress-bar", "false", "--plots", "false",
                 "--max-steps", "2", "--logging-steps", "1", "--report-to", "tensorboard"]) == 0
    assert glob.glob(str(out / "runs" / "events.out.tfevents.*")), os.listdir(out)
    rows = [json.loads(x) for x in open(out / "metrics.jsonl") if x.strip()]
    scalars = _scalars(str(out / "runs"))
    expected = {(k, r["step"]): v for r in rows for k, v in r.items()
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    for key in ("frac_reward_zero_std", "frac_groups_all_zero", "frac_groups_all_one", "reward_guided",
                "reward_unguided", "guidance_length_injected", "reward", "loss", "advantage_std"):
        assert (key, 1) in expected and (key, 2) in expected, key
    assert len(expected) > 20
    for (key, step), value in expected.items():
        assert key in scalars, key
        assert scalars[key][step] == pytest.approx(value, rel=1e-6, abs=1e-6), (key, step)
    # nothing but the logged metrics, at the logged steps
    assert set(scalars) == {k for k, _ in expected}
    assert all(set(v) == {1, 2} for v in scalars.values())


def test_report_to_needs_tensorboard_installed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ValueError, match="`report_to`: tensorboard is not installed"):
        G2RPOConfig(report_to="tensorboard")
    with pytest.raises(ValueError, match="`report_to`: 'mlflow' is not supported"):
        G2RPOConfig(report_to="mlflow")
    assert G2RPOConfig().report_to == "none" and G2RPOConfig().report_targets == []


def test_resume_drops_the_earlier_events_past_the_checkpoint(tiny_local_assets, tmp_path):
    """Killed after step 2 was logged but before its checkpoint: resuming from checkpoint-1 cuts
    metrics.jsonl to step 1, and the event files must agree (one value per step, the new run's)."""
    import shutil

    model, data = tiny_local_assets
    out = tmp_path / "tb"
    args = ["train", "--model-name-or-path", model, "--dataset-name", data, "--output-dir", str(out),
            "--num-generations", "2", "--per-device-train-batch-size", "4", "--max-completion-length", "6",
            "--eval-at-end", "false", "--progress-bar", "false", "--plots", "false", "--max-steps", "2",
            "--save-steps", "1", "--logging-steps", "1", "--report-to", "tensorboard", "--seed", "0"]
    assert main(args) == 0
    shutil.rmtree(out / "checkpoint-2")
    assert main([*args[:-2], "--seed", "1", "--resume"]) == 0  # another seed: step 2's values differ
    rows = [json.loads(x) for x in open(out / "metrics.jsonl") if x.strip()]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "runs"), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("reward")
    assert [e.step for e in events] == [1, 2]
    assert [e.value for e in events] == pytest.approx([r["reward"] for r in rows], rel=1e-6)
