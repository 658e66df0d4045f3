"""A micro-batch trained in pieces (`max_tokens_per_microbatch`) gives the uncut micro-batch's
gradient, loss and metrics; the generation batch is one engine call; gradient checkpointing's
`auto` and the `auto` piece size resolve as documented on the CPU."""
from __future__ import annotations

import pytest
import torch
from helpers import make_config, make_trainer

from g2rpo_fast.rollout.composition import Sample
from g2rpo_fast.trainer.batch import row_tokens_of, split_groups


def _one_step(tmp_path, name, **kw):
    trainer = make_trainer(make_config(tmp_path, name=name, max_steps=1, max_grad_norm=0.0, **kw))  # raw gradients
    grads, pieces = {}, []

    def before_step(optimizer, args, kwargs):
        grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None})

    trainer.optimizer.register_step_pre_hook(before_step)
    build = trainer.train_micro_batches

    def spy(batches):
        pieces.append([len(b.training_pieces()) for b in batches])
        return build(batches)

    trainer.train_micro_batches = spy
    history = trainer.train()
    return history[0], grads, pieces


@pytest.mark.parametrize("loss_type,extra", [
    ("grpo", dict(beta=0.1, num_iterations=2)), ("bnpo", dict(guidance_loss="include")),
    ("dapo", dict(gradient_accumulation_steps=2)), ("dr_grpo", dict(prefix_shared_forward="false")),
])
def test_pieces_give_the_uncut_gradient(tmp_path, loss_type, extra):
    """Pieces of one group each (about 60 row tokens at most) against one row: same gradient,
    same logged loss and loss metrics, whatever the loss type's normaliser."""
    whole, g_whole, p_whole = _one_step(tmp_path, "whole", loss_type=loss_type, max_tokens_per_microbatch=0, **extra)
    cut, g_cut, p_cut = _one_step(tmp_path, "cut", loss_type=loss_type, max_tokens_per_microbatch=8, **extra)
    assert all(n == 1 for step in p_whole for n in step)
    assert all(n == 2 for step in p_cut for n in step)  # 8 completions = 2 groups of 4: one piece each
    assert g_whole.keys() == g_cut.keys() and g_whole
    scale = max(g.abs().max() for g in g_whole.values())
    assert scale > 0
    for name in g_whole:
        torch.testing.assert_close(g_cut[name], g_whole[name], atol=2e-6 * float(scale), rtol=1e-4, msg=name)
    for key in ("loss", "kl", "clip_ratio_low", "clip_ratio_high", "reward"):
        if key in whole:
            assert cut[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-7), key


def _samples(prompts, completions):
    return [Sample(prompt_index=i, prompt_ids=p, guidance_ids=[], generated_ids=c)
            for i, (p, c) in enumerate(zip(prompts, completions))]


def test_split_groups_cuts_whole_groups_and_meets_a_count():
    samples = _samples([[1, 2, 3]] * 4 + [[4, 5]] * 4 + [[6]] * 4, [[7] * n for n in (4, 5, 6, 7) * 3])
    sizes = [row_tokens_of(samples[i:i + 4], prefix_shared=True) for i in (0, 4, 8)]
    assert sizes == [3 + 3 + 4 + 5 + 6, 2 + 18, 1 + 18]
    assert split_groups(samples, 4, True, 0) == [12]
    assert split_groups(samples, 4, True, 41) == [8, 4]  # 21 + 20 fit, then 19
    assert split_groups(samples, 4, True, 40) == [4, 8]  # 21, then 20 + 19
    assert split_groups(samples, 4, True, 5) == [4, 4, 4]  # a group larger than the budget: alone
    assert split_groups(samples, 4, True, 0, count=3) == [4, 4, 4]  # another rank needs 3 pieces
    assert split_groups(samples, 4, False, 50) == [4, 8]  # per sample (every prompt in the row): 30, 26 + 22
    with pytest.raises(ValueError, match="cannot cut 3 groups into 4 pieces"):
        split_groups(samples, 4, True, 0, count=4)


def test_one_engine_call_per_generation_batch(tmp_path):
    trainer = make_trainer(make_config(tmp_path, max_steps=1, gradient_accumulation_steps=40, max_completion_length=2))
    calls = []
    generate = trainer.engine.generate

    def spy(prompts, *a, **k):
        calls.append(len(prompts))
        return generate(prompts, *a, **k)

    trainer.engine.generate = spy
    trainer.train()
    assert calls == [40 * 8]
    assert trainer.engine.max_num_seqs == 40 * 8  # all at once (the engine's default would be 256)


@pytest.mark.parametrize("setting,expected", [("auto", False), ("true", True), (True, True), ("false", False)])
def test_gradient_checkpointing_resolves_on_the_cpu(tmp_path, setting, expected):
    trainer = make_trainer(make_config(tmp_path, gradient_checkpointing=setting))
    assert trainer.gradient_checkpointing is expected
    model = trainer.model  # transformers 5 renamed the flag
    on = model.is_activation_checkpointing if hasattr(model, "is_activation_checkpointing") \
        else model.is_gradient_checkpointing
    assert on is expected
    assert trainer.piece_tokens == 0 and trainer.memory_plan is None  # auto on the CPU: no cut


def test_resume_with_a_pending_batch_in_pieces_equals_uninterrupted(tmp_path):
    """num_iterations = 2 leaves a generated batch, cut into pieces, pending after step 1: the
    checkpoint saves its pieces and the resumed run trains on them as the uninterrupted one did."""
    from helpers import read_metrics, strip_timing

    from g2rpo_fast.checkpointing.checkpoint import load_trainer_state
    from g2rpo_fast.trainer.batch import RolloutBatch

    extra = dict(num_iterations=2, beta=0.1, max_tokens_per_microbatch=8, loss_type="grpo")
    straight = make_config(tmp_path, "straight", max_steps=2, **extra)
    t_straight = make_trainer(straight)
    t_straight.train()
    first = make_config(tmp_path, "resumed", max_steps=1, save_steps=1, **extra)
    make_trainer(first).train()
    pending = load_trainer_state(f"{first.output_dir}/checkpoint-1")["buffer"]
    restored = RolloutBatch.from_state_dict(pending[0], "cpu")
    assert restored.packed is None and len(restored.pieces) == 2
    assert sum(p.loss_scale for p in restored.pieces) == pytest.approx(1.0)
    resumed = make_config(tmp_path, "resumed", max_steps=2, **extra)
    t_resumed = make_trainer(resumed)
    t_resumed.train(resume_from_checkpoint=True)
    assert strip_timing(read_metrics(resumed)) == strip_timing(read_metrics(straight))
    for (k, v), (_, w) in zip(t_straight.model.state_dict().items(), t_resumed.model.state_dict().items()):
        assert torch.equal(v, w), k
