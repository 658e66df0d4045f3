"""G2RPOTrainer end to end on a tiny random Qwen3 (CPU, seconds)."""
import math
import os

import pytest
import torch
from helpers import make_config, make_trainer, read_metrics, strip_timing, tiny_dataset, tiny_model_and_tokenizer

from g2rpo_fast.trainer.trainer import G2RPOTrainer

REQUIRED_KEYS = {"step", "reward", "accuracy", "advantage_std", "guidance_length", "kl", "loss", "clip_ratio/low_mean",
                 "clip_ratio/high_mean", "clip_ratio/region_mean", "tokens_per_s", "step_time",
                 "rewards/digit_fraction_reward/mean", "rewards/accuracy/mean", "rewards/accuracy/std", "entropy",
                 "num_tokens", "epoch", "reward_std", "reward_std_in_group", "completions/mean_length",
                 "completions/clipped_ratio", "completions/max_terminated_length", "grad_norm", "learning_rate"}


def test_one_step_updates_weights_and_logs(tmp_path):
    cfg = make_config(tmp_path, max_steps=1, plots=True, eval_at_end=True)
    model, tok = tiny_model_and_tokenizer(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = G2RPOTrainer(cfg, model=model, tokenizer=tok, train_dataset=tiny_dataset(16),
                           eval_dataset=tiny_dataset(4, split="eval"))
    trainer.train()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "one optimizer step left every weight unchanged"
    rows = read_metrics(cfg)
    assert len(rows) == 1 and REQUIRED_KEYS <= set(rows[0])
    assert rows[0]["step"] == 1 and rows[0]["guidance_length"] == 4
    assert rows[0]["guided_fraction"] == 0.5
    assert all(v is None or math.isfinite(v) for v in rows[0].values())
    assert os.path.isfile(os.path.join(cfg.output_dir, "checkpoint-1", "trainer_state.pt"))
    assert os.path.isfile(os.path.join(cfg.output_dir, "checkpoint-1", "config.json"))
    assert os.path.isfile(os.path.join(cfg.output_dir, "checkpoint-1", "g2rpo_config.json"))
    assert os.path.isfile(os.path.join(cfg.output_dir, "training_curves.png"))
    assert 0.0 <= trainer.final_eval["eval_accuracy"] <= 1.0
    assert not [n for n in os.listdir(cfg.output_dir) if n.startswith(".tmp")]


def test_seeded_runs_are_identical(tmp_path):
    a, b = make_config(tmp_path, "a"), make_config(tmp_path, "b")
    make_trainer(a).train()
    make_trainer(b).train()
    assert strip_timing(read_metrics(a)) == strip_timing(read_metrics(b))
    c = make_config(tmp_path, "c", seed=1)
    make_trainer(c).train()
    assert strip_timing(read_metrics(a)) != strip_timing(read_metrics(c))


@pytest.mark.parametrize("extra", [{}, {"num_iterations": 2, "beta": 0.1, "loss_type": "dapo",
                                        "gradient_accumulation_steps": 2}])
def test_resume_matches_uninterrupted(tmp_path, extra):
    straight = make_config(tmp_path, "straight", max_steps=4, save_steps=2, **extra)
    t_straight = make_trainer(straight)
    t_straight.train()

    crashed = make_config(tmp_path, "crashed", max_steps=4, save_steps=2, **extra)
    t_crash = make_trainer(crashed)
    step_fn = t_crash.training_step

    def crash_after_two():
        if t_crash.step == 3:
            raise KeyboardInterrupt  # dies during step 4, after checkpoint-2 and step 3 were written
        return step_fn()

    t_crash.training_step = crash_after_two
    with pytest.raises(KeyboardInterrupt):
        t_crash.train()
    assert len(read_metrics(crashed)) == 3
    t_resumed = make_trainer(crashed)  # fresh process state: new model, new trainer
    t_resumed.train(resume_from_checkpoint=True)
    assert strip_timing(read_metrics(crashed)) == strip_timing(read_metrics(straight))
    for (k, v), (_, w) in zip(t_straight.model.state_dict().items(), t_resumed.model.state_dict().items()):
        assert torch.equal(v, w), k


def test_failing_reward_scores_zero_and_run_continues(tmp_path):
    calls = {"n": 0}

    def flaky_reward(prompts, completions, **kw):
        calls["n"] += 1
        if len(completions) > 1:
            raise RuntimeError("boom")  # batch call fails; per-sample retry isolates sample 0
        return [float("nan")] if calls["n"] % 2 else [1.0]

    cfg = make_config(tmp_path, reward_funcs=[flaky_reward], guidance_reward="accuracy")
    with pytest.warns(RuntimeWarning):
        trainer = make_trainer(cfg)
        history = trainer.train()
    assert len(history) == 2
    assert history[0]["reward_errors"] > 0
    assert all(0.0 <= r["rewards/flaky_reward/mean"] <= 1.0 for r in history)


def test_no_guidance_truncation_mask_checkpointing(tmp_path):
    cfg = make_config(tmp_path, guidance_schedule="none", mask_truncated_completions=True, max_steps=1,
                      max_completion_length=3, gradient_checkpointing=True, importance_sampling_level="sequence")
    trainer = make_trainer(cfg)
    history = trainer.train()
    assert history[0]["guidance_length"] == 0 and history[0]["guided_fraction"] == 0.0
    assert history[0]["completions/clipped_ratio"] > 0


    assert history[0]["completions/clipped_ratio"] > 0


@pytest.mark.parametrize("mask", [True, False])
def test_mask_truncated_completions_reaches_the_loss_weights(tmp_path, mask):
    """Through the trainer's own batch building: with the flag, every token of a truncated
    completion (no EOS within max_completion_length) has weight 0 and the others keep theirs;
    without it, truncated completions are weighted like any other."""
    cfg = make_config(tmp_path, guidance_schedule="none", mask_truncated_completions=mask, max_completion_length=3,
                      prefix_shared_forward="false", packed_row_tokens=0)
    trainer = make_trainer(cfg)
    # a random tiny model rarely emits its EOS within 3 tokens (whether one of 8 samples did was
    # up to the sampler's draws): stop on a quarter of the vocabulary, so both kinds occur
    trainer.rollouts.stop_token_ids = list(range(0, trainer.engine.vocab_size, 4))
    batch = trainer.generate_rollouts(guidance_length=0)[0]
    packed, samples = batch.packed, batch.samples
    assert any(s.truncated for s in samples) and any(not s.truncated for s in samples)  # both kinds present
    offsets = packed.cu_seqlens.tolist()
    for i, s in enumerate(samples):
        weights = packed.completion_mask[offsets[i]:offsets[i + 1]]
        completion_weight = float(weights.sum())
        if mask and s.truncated:
            assert completion_weight == 0.0, (i, weights)
        else:
            assert completion_weight == len(s.completion_ids), (i, weights)


def test_guidance_updates_once_per_generated_batch(tmp_path):
    """num_iterations = 2: one generated batch serves two optimizer steps, and the controller
    is updated once per generated batch, on the step that generated it (steps 1 and 3 of 4),
    with that step's accuracy."""
    cfg = make_config(tmp_path, max_steps=4, num_iterations=2)
    trainer = make_trainer(cfg)
    calls = []
    real = trainer.guidance.update
    trainer.guidance.update = lambda reward: calls.append((trainer.step + 1, reward)) or real(reward)
    history = trainer.train()
    assert [step for step, _ in calls] == [1, 3]
    assert [reward for _, reward in calls] == [history[0]["accuracy"], history[2]["accuracy"]]
