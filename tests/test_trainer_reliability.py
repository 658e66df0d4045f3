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


# ---------------------------------------------------------------- rewards that hang, stop or end the process
def test_reward_timeout_is_finite_by_default_and_a_hang_is_a_failed_record(tmp_path, caplog):
    """A hanging reward stalled training forever (no default limit). Now the default is finite,
    and a call that overruns it scores 0 for its samples, with a log line, a warning, and the
    failure in the step's metrics; the step completes."""
    from g2rpo_fast.trainer.config import G2RPOConfig

    default = G2RPOConfig.__dataclass_fields__["reward_timeout"].default
    assert isinstance(default, float) and math.isfinite(default) and 0 < default <= 600
    assert make_config(tmp_path, "default").reward_timeout == default
    release = threading.Event()

    def stuck_reward(prompts, completions, **kw):
        release.wait(60)
        return [1.0] * len(completions)

    # the default's path with a short limit (the default itself would take 5 minutes here)
    cfg = make_config(tmp_path, max_steps=2, reward_timeout=0.5, reward_funcs=[stuck_reward, "accuracy"])
    try:
        with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"):
            warnings.simplefilter("always")
            make_trainer(cfg).train()
    finally:
        release.set()
    rows = read_metrics(cfg)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["rewards/stuck_reward/mean"] == 0.0 and r["reward_errors"] == 1
        assert r["reward_failures"] == ["reward stuck_reward: no result after 0.5 s (reward_timeout); its 8 samples "
                                        "scored 0.0"]
    assert sum("stuck_reward: no result after 0.5 s" in str(w.message) for w in caught) == 2
    assert sum("stuck_reward: no result after 0.5 s" in r.getMessage() for r in caplog.records) == 2


def test_warmup_longer_than_the_run_is_warned(tmp_path):
    with pytest.warns(UserWarning, match=r"`warmup_steps` \(1000\) >= `max_steps` \(1\): the learning rate never "
                                         r"reaches learning_rate"):
        make_trainer(make_config(tmp_path, max_steps=1, warmup_steps=1000))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        make_trainer(make_config(tmp_path, "short", max_steps=4, warmup_steps=3))


def test_a_row_without_a_column_its_reward_takes_is_refused(tmp_path):
    """`accuracy` takes `answer`: a row whose answer is missing would score 0 forever, silently."""
    from helpers import tiny_model_and_tokenizer

    from g2rpo_fast.trainer.trainer import G2RPOTrainer

    rows = tiny_dataset(16)
    data = rows.map(lambda row, i: {"answer": None if i == 5 else row["answer"]}, with_indices=True)
    model, tok = tiny_model_and_tokenizer(seed=0)
    with pytest.raises(ValueError, match=r"`dataset_name`: train_dataset, row 6, column 'answer': null; the reward "
                                         r"function accuracy_reward needs it"):
        G2RPOTrainer(make_config(tmp_path), model=model, tokenizer=tok, train_dataset=data)


# ---------------------------------------------------------------- metrics.jsonl lines lost and rebuilt
def _tear_last_line(path):
    with open(path, "rb") as fh:
        text = fh.read()
    start = text.rstrip(b"\n").rfind(b"\n") + 1
    with open(path, "wb") as fh:
        fh.write(text[:start + (len(text) - start) // 2])  # killed mid-write


@pytest.mark.parametrize("damage", ["torn_last_line", "deleted_file"])
def test_lost_metrics_lines_are_rebuilt_from_the_checkpoint(tmp_path, damage):
    """The checkpoint keeps every step's metrics: a torn last line whose checkpoint exists (the
    resumed log was [1, 2, 3, 5]) or a deleted metrics.jsonl (all earlier steps lost, without a
    word) comes back exactly as logged, with a warning naming the steps."""
    cfg = make_config(tmp_path, max_steps=4, save_steps=2, save_total_limit=None)
    make_trainer(cfg).train()
    original = read_metrics(cfg)
    assert [m["step"] for m in load_trainer_state(ckpt(cfg, 4))["metrics"]] == [1, 2, 3, 4]
    metrics = os.path.join(cfg.output_dir, "metrics.jsonl")
    if damage == "torn_last_line":
        _tear_last_line(metrics)
    else:
        os.remove(metrics)
    resumed = make_config(tmp_path, max_steps=5, save_steps=2, save_total_limit=None)
    with pytest.warns(RuntimeWarning) as record:
        make_trainer(resumed).train(resume_from_checkpoint=True)
    rows = read_metrics(resumed)
    assert [m["step"] for m in rows] == [1, 2, 3, 4, 5]
    assert rows[:4] == original  # as logged, timings included
    lost = "[4]" if damage == "torn_last_line" else "[1, 2, 3, 4]"
    assert any(f"metrics.jsonl lacked step(s) {lost}" in str(w.message) and "rebuilt from checkpoint-4"
               in str(w.message) for w in record)


def test_metrics_that_cannot_be_rebuilt_are_named():
    from g2rpo_fast.trainer.metrics_log import rebuild_metrics

    logged = [{"step": 1, "reward": 0.1}, {"step": 3, "reward": 0.3}, {"step": 5, "reward": 0.5}]
    with pytest.warns(RuntimeWarning, match=r"the metrics of step\(s\) \[2, 4\] are lost: neither metrics.jsonl nor "
                                            r"checkpoint-4 holds them"):
        rows = rebuild_metrics(logged, None, 4, "out/checkpoint-4")  # a checkpoint from before they were kept
    assert rows == logged[:2]
    with pytest.warns(RuntimeWarning, match=r"lacked step\(s\) \[2\] .*; rebuilt from checkpoint-4") as record:
        rows = rebuild_metrics(logged, [{"step": 2, "reward": 0.2}], 4, "out/checkpoint-4/")
    assert [m["step"] for m in rows] == [1, 2, 3] and any("[4] are lost" in str(w.message) for w in record)
