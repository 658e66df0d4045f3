"""The trainer around faults: odd-step saves with num_iterations > 1, torn metrics and corrupt
checkpoints on resume, used output directories, changed config on resume, bad rewards."""
import math
import os
import sys
import threading
import warnings

import pytest
import torch
from helpers import (
    make_config,
    make_trainer,
    read_metrics,
    strip_timing,
    tiny_dataset,
)

from g2rpo_fast.checkpointing.checkpoint import load_trainer_state, verify_checkpoint
from g2rpo_fast.checkpointing.run_dir import RunSetupError
from g2rpo_fast.trainer.batch import RolloutBatch


def ckpt(cfg, step):
    return os.path.join(cfg.output_dir, f"checkpoint-{step}")


def test_num_iterations_saves_at_odd_steps_and_resumes_exactly(tmp_path):
    """Defect 1: with num_iterations=2 a roll-out buffer is pending after every odd step; saving
    it (PackedBatch.row_splits is a tuple) crashed, losing the final checkpoint and eval."""
    extra = dict(num_iterations=2, beta=0.1, packed_row_tokens=40)  # 40: rows are cut, row_splits non-empty
    straight = make_config(tmp_path, "straight", max_steps=4, **extra)
    t_straight = make_trainer(straight)
    t_straight.train()

    odd = make_config(tmp_path, "odd", max_steps=3, save_steps=1, save_total_limit=None, eval_at_end=True,
                      eval_num_samples=0, num_eval_prompts=2, **extra)
    make_trainer(odd, eval_dataset=tiny_dataset(4, split="eval")).train()
    for step in (1, 2, 3):
        assert verify_checkpoint(ckpt(odd, step)) is None
    pending = load_trainer_state(ckpt(odd, 3))["buffer"]
    # a pending buffer with cut rows was saved
    assert pending is not None and RolloutBatch.from_state_dict(pending[0], "cpu").packed.row_splits
    assert os.path.isfile(os.path.join(odd.output_dir, "eval_results.json"))

    resumed = make_config(tmp_path, "odd", max_steps=4, **extra)
    t_resumed = make_trainer(resumed)
    t_resumed.train(resume_from_checkpoint=True)
    assert strip_timing(read_metrics(resumed)) == strip_timing(read_metrics(straight))
    for (k, v), (_, w) in zip(t_straight.model.state_dict().items(), t_resumed.model.state_dict().items()):
        assert torch.equal(v, w), k


def test_resume_past_torn_metrics_and_a_corrupt_latest_checkpoint(tmp_path):
    """Defects 4 and 5: a torn metrics tail and a truncated newest checkpoint; resume falls back
    to checkpoint-2, says why, truncates metrics to step 2 and reproduces steps 3-4."""
    cfg = make_config(tmp_path, max_steps=4, save_steps=2)
    make_trainer(cfg).train()
    original = strip_timing(read_metrics(cfg))
    with open(os.path.join(cfg.output_dir, "metrics.jsonl"), "a") as fh:
        fh.write('{"step": 5, "reward": 0.2')  # killed mid-write
    weights = os.path.join(ckpt(cfg, 4), "model.safetensors")
    with open(weights, "r+b") as fh:
        fh.truncate(100)
    with pytest.warns(RuntimeWarning) as record:
        make_trainer(cfg).train(resume_from_checkpoint=True)
    messages = " | ".join(str(w.message) for w in record)
    assert "skipped checkpoint-4: model.safetensors has 100 bytes" in messages
    assert "resuming from checkpoint-2" in messages
    assert "unreadable line(s) [5]" in messages
    assert strip_timing(read_metrics(cfg)) == original
    assert verify_checkpoint(ckpt(cfg, 4)) is None  # re-saved, atomically


def test_resume_with_no_complete_checkpoint_is_refused(tmp_path):
    cfg = make_config(tmp_path, max_steps=1)
    make_trainer(cfg).train()
    os.remove(os.path.join(ckpt(cfg, 1), "trainer_state.pt"))
    with pytest.raises(RunSetupError, match=r"`resume`: no complete checkpoint .*checkpoint-1: trainer_state.pt is "
                                            r"missing"):
        make_trainer(cfg).train(resume_from_checkpoint=True)


def test_used_output_dir_is_refused_unless_overwritten(tmp_path):
    """Defect 2: a fresh run into a used directory mixed two runs; now it is refused, and
    overwrite_output_dir removes the earlier run first."""
    first = make_config(tmp_path, max_steps=3, save_steps=1, save_total_limit=None)
    make_trainer(first).train()
    again = make_config(tmp_path, max_steps=1)
    with pytest.raises(RunSetupError, match="already holds a run"):
        make_trainer(again).train()
    assert len(read_metrics(first)) == 3  # untouched
    over = make_config(tmp_path, max_steps=1, overwrite_output_dir=True)
    with pytest.warns(RuntimeWarning, match="removed the earlier run's"):
        make_trainer(over).train()
    assert [r["step"] for r in read_metrics(over)] == [1]
    assert sorted(n for n in os.listdir(over.output_dir) if n.startswith("checkpoint")) == ["checkpoint-1"]


def test_resume_with_changed_config_warns_listing_the_changes(tmp_path):
    make_trainer(make_config(tmp_path, max_steps=1)).train()
    changed = make_config(tmp_path, max_steps=2, learning_rate=2e-2, seed=1, num_generations=2)
    with pytest.warns(RuntimeWarning) as record:
        make_trainer(changed).train(resume_from_checkpoint=True)
    msg = next(str(w.message) for w in record if "configuration differs" in str(w.message))
    assert "learning_rate 0.01 -> 0.02" in msg and "num_generations 4 -> 2" in msg and "seed 0 -> 1" in msg
    assert "max_steps" not in msg  # extending a run is normal


def test_huge_exiting_and_hanging_rewards_do_not_stop_training(tmp_path):
    """Defect 8: 1e308 is clipped (no inf/NaN), sys.exit is caught like an exception, a hung
    call times out and scores 0 with one warning."""
    release = threading.Event()

    def huge_reward(prompts, completions, **kw):
        return [1e308 if i % 2 else -1e308 for i in range(len(completions))]

    def exiting_reward(prompts, completions, **kw):
        sys.exit(3)

    def hanging_reward(prompts, completions, **kw):
        release.wait(30)
        return [1.0] * len(completions)

    cfg = make_config(tmp_path, max_steps=1, reward_timeout=0.5,
                      reward_funcs=[huge_reward, exiting_reward, hanging_reward, "accuracy"])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = make_trainer(cfg).train()
    finally:
        release.set()
    m = history[0]
    assert all(v is None or not isinstance(v, float) or math.isfinite(v) for v in m.values())
    assert m["rewards/huge_reward/mean"] == 0.0  # +1e6 and -1e6 in equal numbers
    assert m["rewards/exiting_reward/mean"] == 0.0 and m["rewards/hanging_reward/mean"] == 0.0
    texts = [str(w.message) for w in caught]
    assert sum("hanging_reward: no result after 0.5 s" in t for t in texts) == 1
    assert any("exiting_reward" in t and "sys.exit(3)" in t for t in texts)
    assert any("clipped to 1e+06" in t for t in texts)
