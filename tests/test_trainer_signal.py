"""Steps without signal: `skip_zero_signal_steps` (no AdamW update when no trained token has a
non-zero advantage) and DAPO's dynamic sampling (`dynamic_sampling`), on hand-built reward
sequences: a reward function that returns, call after call, the rewards the test scripted."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from contract_helpers import record
from helpers import make_config, make_trainer, read_metrics

from g2rpo_fast.rollout.dynamic_sampling import SignalGroups, equal_reward_groups, sample_with_signal
from g2rpo_fast.trainer.optimize import has_signal

ADV_EPS = 1e-4


class Script:
    """A reward returning the next scripted list on each call (one call per generation round)."""

    def __init__(self, *calls):
        self.__name__ = "scripted"
        self.calls = list(calls)
        self.seen = 0

    def __call__(self, prompts, completions, **kwargs):
        values = self.calls[min(self.seen, len(self.calls) - 1)]
        self.seen += 1
        assert len(values) == len(completions)
        return list(values)


def advantages64(rewards):
    r = torch.tensor(rewards, dtype=torch.float64)
    return (r - r.mean()) / (r.std() + ADV_EPS)


def snapshots(trainer):
    """Wrap `training_step`: the weights and AdamW state after every step."""
    out, step = [], trainer.training_step

    def wrapped():
        m = step()
        state = [dict(trainer.optimizer.state[p]) for p in trainer.model.parameters()]
        out.append(({n: p.detach().clone() for n, p in trainer.model.named_parameters()},
                    [{k: v.clone() for k, v in s.items()} for s in state]))
        return m

    trainer.training_step = wrapped
    return out


SIGNAL = [1.0, 0.0, 0.0, 0.0] + [0.0] * 4  # one group of two with a non-zero advantage
NOTHING = [0.0] * 8


def run(tmp_path, name, **kw):
    opts = dict(max_steps=3, guidance_schedule="none", reward_funcs=[Script(SIGNAL, NOTHING)], weight_decay=0.1,
                lr_scheduler_type="linear", warmup_steps=0, learning_rate=1e-2)
    opts.update(kw)
    cfg = make_config(tmp_path, name, **opts)
    trainer = make_trainer(cfg)
    snaps = snapshots(trainer)
    trainer.train()
    return trainer, snaps, read_metrics(cfg)


def test_zero_signal_steps_leave_weights_and_adamw_state_alone(tmp_path):
    trainer, snaps, rows = run(tmp_path, "skip")
    (w1, s1), (w2, _), (w3, s3) = snaps
    assert any(not torch.equal(w1[n], p0) for n, p0 in make_trainer(trainer.config).model.named_parameters())
    for n in w1:  # steps 2 and 3 had no signal: no moment update, no weight decay, no step count
        assert torch.equal(w1[n], w2[n]) and torch.equal(w1[n], w3[n]), n
    for a, b in zip(s1, s3):
        assert int(a["step"]) == int(b["step"]) == 1
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert [r["steps_skipped"] for r in rows] == [0, 1, 2]
    assert [(r["loss"], r["grad_norm"], r["clip_ratio/region_mean"], r["clip_ratio/low_mean"],
             r["clip_ratio/high_mean"], r["kl"]) for r in rows[1:]] == [(0.0,) * 6] * 2
    # the skipped steps still count for the schedule: linear decay over 3 steps; step k trains
    # (and logs, as TRL) at the rate after k - 1 schedule steps, the skipped step 2 among them
    assert [r["learning_rate"] for r in rows] == pytest.approx([1e-2 * (1 - k / 3) for k in (0, 1, 2)])


def test_without_skipping_adamw_moves_the_weights_on_zero_signal_steps(tmp_path):
    _, snaps, rows = run(tmp_path, "noskip", skip_zero_signal_steps=False)
    (w1, _), (w2, s2), _ = snaps
    assert any(not torch.equal(w1[n], w2[n]) for n in w1)  # the drift the skip removes
    assert all(int(s["step"]) == 2 for s in s2)
    assert [r["steps_skipped"] for r in rows] == [0, 0, 0]
    assert rows[1]["loss"] == 0.0  # the gradient is zero, the update is not


def test_with_beta_the_kl_term_is_trained_and_nothing_is_skipped(tmp_path):
    _, snaps, rows = run(tmp_path, "beta", beta=0.1)
    assert [r["steps_skipped"] for r in rows] == [0, 0, 0]
    assert all(int(s["step"]) == 3 for s in snaps[-1][1])


def test_skipped_count_survives_resume(tmp_path):
    straight = make_config(tmp_path, "straight", max_steps=4, save_steps=2, guidance_schedule="none",
                           reward_funcs=[Script(NOTHING)])
    make_trainer(straight).train()
    first = make_config(tmp_path, "resumed", max_steps=2, save_steps=2, guidance_schedule="none",
                        reward_funcs=[Script(NOTHING)])
    make_trainer(first).train()
    again = make_config(tmp_path, "resumed", max_steps=4, save_steps=2, guidance_schedule="none",
                        reward_funcs=[Script(NOTHING)])
    make_trainer(again).train(resume_from_checkpoint=True)
    assert [r["steps_skipped"] for r in read_metrics(again)] == [1, 2, 3, 4]
    assert [r["steps_skipped"] for r in read_metrics(straight)] == [1, 2, 3, 4]


def test_a_skipped_step_leaves_a_plateau_scheduler_to_the_evaluations(tmp_path):
    """reduce_lr_on_plateau steps on the held-out accuracy at each evaluation, never on a step:
    a skipped step must not call it (its step() needs the metric). patience 0, factor 0.5."""
    from helpers import tiny_dataset, tiny_model_and_tokenizer

    from g2rpo_fast.trainer.trainer import G2RPOTrainer

    cfg = make_config(tmp_path, "plateau", max_steps=3, guidance_schedule="none", learning_rate=1e-2,
                      reward_funcs=[Script(SIGNAL, NOTHING)], lr_scheduler_type="reduce_lr_on_plateau",
                      lr_scheduler_kwargs={"patience": 0, "factor": 0.5}, eval_strategy="steps", eval_steps=1)
    model, tok = tiny_model_and_tokenizer(seed=0)
    trainer = G2RPOTrainer(cfg, model=model, tokenizer=tok, train_dataset=tiny_dataset(16),
                           eval_dataset=tiny_dataset(2, split="eval"))
    trainer.evaluate = lambda **kw: {"eval_accuracy": 0.0, "eval_count": 2}
    rows = trainer.train()
    assert [r["steps_skipped"] for r in rows] == [0, 1, 2]
    # evaluated after steps 1 and 2 (step 3 is the last): the first sets the best, the second
    # (no better) halves the rate; the skipped step 2 itself changes nothing
    assert [r["learning_rate"] for r in rows] == pytest.approx([1e-2, 1e-2, 5e-3])


def _batch(advantages, lengths, completion_mask=None, guidance_mask=None):
    n = sum(lengths)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    ones, zeros = torch.ones(n), torch.zeros(n)
    packed = SimpleNamespace(token_ids=torch.zeros(n, dtype=torch.long), cu_seqlens=cu,
                             completion_mask=ones if completion_mask is None else torch.tensor(completion_mask),
                             guidance_mask=zeros if guidance_mask is None else torch.tensor(guidance_mask))
    batch = SimpleNamespace(packed=packed, advantages=torch.tensor(advantages))
    batch.training_pieces = lambda: [batch]
    return batch


def test_has_signal_counts_only_trained_tokens():
    one = SimpleNamespace(world_size=1)
    assert has_signal([_batch([0.0, 0.5], [2, 3])], "mask", one, None)
    assert not has_signal([_batch([0.0, 0.0], [2, 3])], "mask", one, None)
    # the only non-zero advantage sits on a sequence whose tokens are all guidance
    guided = _batch([0.7, 0.0], [2, 3], guidance_mask=[1.0, 1.0, 0.0, 0.0, 0.0])
    assert not has_signal([guided], "mask", one, None) and has_signal([guided], "include", one, None)
    # ... or on a masked (truncated) completion
    masked = _batch([0.0, -0.2], [2, 3], completion_mask=[1.0, 1.0, 0.0, 0.0, 0.0])
    assert not has_signal([masked], "mask", one, None)
    assert has_signal([_batch([0.0, 0.0], [2, 3]), _batch([0.1], [1])], "mask", one, None)
    cut = SimpleNamespace(training_pieces=lambda: [_batch([0.0], [2]), _batch([0.3], [1])])  # in pieces
    assert has_signal([cut], "mask", one, None)


# ---------------------------------------------------------------- dynamic sampling
def test_signal_groups_on_hand_built_rounds():
    g = SignalGroups(target_groups=3, group_size=2, max_rounds=3)
    assert g.add([1, 1, 0, 1, 0, 0, 0.5, 0.25]) == [1, 3] and not g.done
    assert g.add([0, 1, 1, 0, 2, 2]) == [0] and g.full and g.done  # room for one: the second is dropped
    assert (g.rounds, g.groups_seen, g.equal_groups, g.kept) == (2, 7, 3, 3)
    capped = SignalGroups(target_groups=2, group_size=2, max_rounds=2)
    assert capped.add([0, 0, 1, 1]) == [] and capped.add([3, 3, 0.5, 0.5]) == []
    assert capped.done and not capped.full and capped.equal_groups == 4
    with pytest.raises(ValueError, match="max_rounds"):
        capped.add([0, 1])
    with pytest.raises(ValueError, match="whole groups"):
        SignalGroups(1, 2, 1).add([0, 1, 0])
    with pytest.raises(ValueError, match="`target_groups`"):
        SignalGroups(0, 2, 1)
    assert equal_reward_groups([0.5, 0.5 + 1e-7, 0.5, 0.5 + 1e-5], 2).tolist() == [True, False]


def test_sample_with_signal_asks_the_ranks_and_stops_at_the_cap():
    rounds_given = [[0, 0, 0, 0], [1, 1, 0, 1], [0, 1, 0, 1]]
    scores = lambda r: SimpleNamespace(total=rounds_given[r], guide=rounds_given[r])
    asked = []

    def agree(full):
        asked.append(full)
        return False  # another rank is not full yet: keep generating

    (rounds,), (stats,) = sample_with_signal(lambda r: [(f"s{r}", scores(r))], group_size=2, target_groups=1,
                                             max_rounds=3, agree=agree)
    assert [(s, keep) for s, _, keep in rounds] == [("s0", []), ("s1", [1]), ("s2", [])]
    assert asked == [False, True]  # the last round asks nobody: the cap ends it on every rank
    assert stats == {"rounds": 3, "groups": 6, "equal_groups": 3, "guide_sum": 5.0}


def test_sample_with_signal_over_micro_batches_goes_on_until_all_are_full():
    given = {(0, 0): [1, 0, 0, 1], (0, 1): [0, 0, 1, 1],  # micro-batch 0 is full after round 0
             (1, 0): [0, 1, 1, 0], (1, 1): [1, 0, 2, 2],  # micro-batch 1 keeps one group in round 1
             (2, 0): [0, 1, 0, 1], (2, 1): [0, 1, 0, 0]}
    roll_out = lambda r: [((r, k), SimpleNamespace(total=given[r, k], guide=[0.5] * 4)) for k in (0, 1)]
    (zero, one), stats = sample_with_signal(roll_out, group_size=2, target_groups=2, max_rounds=5, parts=2)
    assert [keep for _, _, keep in zero] == [[0, 1], [], []]  # full: later rounds' groups are dropped
    assert [keep for _, _, keep in one] == [[], [0], [0]]
    assert [s["rounds"] for s in stats] == [3, 3] and [s["equal_groups"] for s in stats] == [0, 4]
    assert [s["guide_sum"] for s in stats] == [6.0, 6.0]
    with pytest.raises(ValueError, match="micro-batches"):
        sample_with_signal(roll_out, group_size=2, target_groups=2, max_rounds=5, parts=3)


def test_dynamic_sampling_trains_on_the_groups_with_signal(tmp_path):
    """G = 4, 2 prompts per round, at most 3 rounds. Step 1: round 0 keeps its second group,
    round 1 its second (the first is all right): full after 2 rounds. Step 2: three rounds of
    equal rewards: the last round is trained on as generated, i.e. skipped."""
    script = Script([0, 0, 0, 0, 1, 0, 1, 0], [1, 1, 1, 1, 0, 0, 0, 1], *[[0.0] * 8] * 3)
    cfg = make_config(tmp_path, "dapo", max_steps=2, guidance_schedule="adaptive", guidance_ratio=0.0,
                      reward_funcs=[script], guidance_reward=script, dynamic_sampling=True,
                      dynamic_sampling_max_rounds=3)
    trainer = make_trainer(cfg)
    rec = record(trainer)
    trainer.train()
    rows = read_metrics(cfg)
    assert [r["sampling_rounds"] for r in rows] == [2, 3] and [r["sampled_groups"] for r in rows] == [4, 6]
    assert [r["sampled_frac_reward_zero_std"] for r in rows] == [0.5, 1.0]
    assert [r["steps_skipped"] for r in rows] == [0, 1] and trainer.data_position == 2 * 5
    assert rows[0]["sampled_accuracy"] == 7 / 16 and rows[0]["accuracy"] == 3 / 8  # all generated vs trained
    assert trainer.guidance.history[0] == 7 / 16  # the controller sees every generated sample
    (step1,) = rec.steps
    (call,) = step1.loss_calls
    want = torch.cat([advantages64([1, 0, 1, 0]), advantages64([0, 0, 0, 1])]).float()
    torch.testing.assert_close(call["advantages"], want)
    kept = rec.rollouts[0].outputs[4:8] + rec.rollouts[1].outputs[4:8]
    assert call["token_ids"].tolist() == [t for out in kept for t in out]


def test_rollout_batch_keeps_its_sampling_statistics_through_a_checkpoint(tmp_path):
    from g2rpo_fast.trainer.batch import RolloutBatch

    cfg = make_config(tmp_path, "state", dynamic_sampling=True, dynamic_sampling_max_rounds=2)
    trainer = make_trainer(cfg)
    (batch,) = trainer.generate_rollouts(2)
    assert batch.sampling["rounds"] in (1, 2) and batch.sampling["groups"] == 2 * batch.sampling["rounds"]
    back = RolloutBatch.from_state_dict(batch.state_dict(), trainer.device)
    assert back.sampling == batch.sampling


def test_kept_groups_joins_rounds_and_falls_back_to_the_last_round():
    from g2rpo_fast.rewards.scoring import Scores
    from g2rpo_fast.rollout.composition import Sample
    from g2rpo_fast.trainer.batch import kept_groups

    def round_of(tag, rewards):
        samples = [Sample(prompt_index=i // 2, prompt_ids=[tag], guidance_ids=[], generated_ids=[tag, i])
                   for i in range(len(rewards))]
        return samples, Scores(list(rewards), [list(rewards), [r * 2 for r in rewards]], list(rewards))

    a, b = round_of(1, [0, 0, 1, 0]), round_of(2, [1, 0, 3, 3])
    samples, scores = kept_groups([(*a, [1]), (*b, [0])], group_size=2)
    assert [(s.prompt_index, s.generated_ids) for s in samples] == [(0, [1, 2]), (0, [1, 3]), (1, [2, 0]),
                                                                    (1, [2, 1])]
    assert scores.total == [1, 0, 1, 0] and scores.per_func[1] == [2, 0, 2, 0] and scores.guide == [1, 0, 1, 0]
    samples, scores = kept_groups([(*a, []), (*b, [])], group_size=2)
    assert [s.generated_ids[0] for s in samples] == [2, 2, 2, 2] and scores.total == [1, 0, 3, 3]


def test_adaptive_sparse_through_the_trainer(tmp_path):
    """The config's guidance_max_factor reaches the rule: a zero-reward step multiplies ℓ by it."""
    for factor, want in ((3.0, [4, 12, 16]), (2.0, [4, 8, 16])):
        script = Script(SIGNAL, NOTHING)
        cfg = make_config(tmp_path, f"sparse{factor}", max_steps=3, guidance_schedule="adaptive_sparse",
                          guidance_initial_length=4, guidance_max_length=16, guidance_max_factor=factor,
                          reward_funcs=[script], guidance_reward=script)
        make_trainer(cfg).train()
        assert [r["guidance_length_next"] for r in read_metrics(cfg)] == want


def test_dynamic_sampling_with_gradient_accumulation(tmp_path):
    """Two micro-batches of 2 prompts (G = 4): each round generates both (one reward call per
    micro-batch); micro-batch 0 is full after round 0, micro-batch 1 after round 2."""
    script = Script([1, 0, 0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1],
                    [0, 1, 0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0, 0, 0],
                    [1, 1, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 0])
    cfg = make_config(tmp_path, "accum", max_steps=1, guidance_schedule="none", reward_funcs=[script],
                      dynamic_sampling=True, dynamic_sampling_max_rounds=4, gradient_accumulation_steps=2)
    trainer = make_trainer(cfg)
    rec = record(trainer)
    trainer.train()
    (row,) = read_metrics(cfg)
    assert (row["sampling_rounds"], row["sampled_groups"], trainer.data_position) == (3, 12, 12)
    (step,) = rec.steps
    got = [call["advantages"] for call in step.loss_calls]
    want = [torch.cat([advantages64([1, 0, 0, 0]), advantages64([0, 1, 0, 0])]),
            torch.cat([advantages64([1, 0, 0, 0]), advantages64([0, 1, 1, 0])])]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b.float())
    # one engine call per round for both micro-batches (recorded as one Rollout per micro-batch):
    # micro-batch 1 kept round 1's first group and round 2's second
    assert len(rec.rollouts) == 6
    kept = rec.rollouts[3].outputs[0:4] + rec.rollouts[5].outputs[4:8]
    assert step.loss_calls[1]["token_ids"].tolist() == [t for out in kept for t in out]


def test_each_dynamic_sampling_round_draws_its_own_seeds(tmp_path):
    """A further round samples fresh prompts with fresh randomness: its seeds differ from every
    earlier round's (and from the next step's first round)."""
    script = Script(*[[0.0] * 8] * 6)  # no signal: every step runs all its rounds
    cfg = make_config(tmp_path, "seeds", max_steps=2, guidance_schedule="none", reward_funcs=[script],
                      dynamic_sampling=True, dynamic_sampling_max_rounds=3)
    trainer = make_trainer(cfg)
    seen, real = [], trainer.rollouts.generate
    trainer.rollouts.generate = lambda *a, **kw: seen.append(tuple(kw["seeds"])) or real(*a, **kw)
    trainer.train()
    assert len(seen) == 6 and len({s for call in seen for s in call}) == 6 * 8
