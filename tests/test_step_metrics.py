"""The group-outcome and guidance metrics of a step (`trainer/metrics_log.py`), on hand-built
groups whose expected values are counted by hand here."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from g2rpo_fast.rollout.composition import Sample
from g2rpo_fast.trainer.metrics_log import group_outcomes, guidance_split, step_metrics

# Six groups of G = 4, each built to land in a known set of categories.
GROUPS = [
    [0.0, 0.0, 0.0, 0.0],    # all wrong: zero std and all-zero
    [1.0, 1.0, 1.0, 1.0],    # all right: zero std and all-one
    [0.0, 1.0, 0.0, 0.0],    # mixed: the only kind that teaches GRPO something
    [0.5, 0.5, 0.5, 0.5],    # equal but neither 0 nor 1: zero std only
    [-1.0, 0.0, 0.0, -0.5],  # nothing above 0, not equal: all-zero only
    [1.0, 2.0, 1.0, 1.5],    # everything at least 1, not equal: all-one only
]


def test_group_outcomes_hand_built():
    flat = [r for g in GROUPS for r in g]
    m = group_outcomes(flat, num_generations=4)
    assert m == {"frac_reward_zero_std": 3 / 6, "frac_groups_all_zero": 2 / 6, "frac_groups_all_one": 2 / 6}


def test_group_outcomes_one_group_each_way():
    assert group_outcomes([0, 0], 2) == {"frac_reward_zero_std": 1.0, "frac_groups_all_zero": 1.0,
                                         "frac_groups_all_one": 0.0}
    assert group_outcomes([1, 0, 1, 1], 2) == {"frac_reward_zero_std": 0.5, "frac_groups_all_zero": 0.0,
                                               "frac_groups_all_one": 0.5}


def _sample(guidance_len: int, generated: int = 3) -> Sample:
    return Sample(prompt_index=0, prompt_ids=[1, 2], guidance_ids=list(range(guidance_len)),
                  generated_ids=[5] * generated)


def test_guidance_split_hand_built():
    # ℓ = 4 but the second guided sample's solution had only 2 tokens: 3 tokens injected on average.
    samples = [_sample(4), _sample(2), _sample(0), _sample(0), _sample(0)]
    rewards = [1.0, 0.0, 0.0, 1.0, 1.0]
    m = guidance_split(samples, rewards)
    assert m["reward_guided"] == pytest.approx(0.5)
    assert m["reward_unguided"] == pytest.approx(2 / 3)
    assert m["guidance_length_injected"] == pytest.approx(3.0)


def test_guidance_split_absent_kinds_are_null_not_nan():
    none_guided = guidance_split([_sample(0), _sample(0)], [1.0, 0.0])
    assert none_guided == {"reward_guided": None, "reward_unguided": 0.5, "guidance_length_injected": 0.0}
    all_guided = guidance_split([_sample(3), _sample(1)], [1.0, 0.0])
    assert all_guided == {"reward_guided": 0.5, "reward_unguided": None, "guidance_length_injected": 2.0}


def _batch(samples, rewards):
    scores = SimpleNamespace(total=list(rewards), guide=list(rewards), per_func=[list(rewards)])
    return SimpleNamespace(samples=samples, scores=scores, advantages=torch.zeros(len(samples)))


def test_step_metrics_carries_them_over_micro_batches_and_into_json():
    # Two micro-batches of two groups (G = 2): groups [1, 1] [0, 1] | [0, 0] [0, 0].
    b1 = _batch([_sample(6), _sample(0), _sample(4), _sample(0)], [1.0, 1.0, 0.0, 1.0])
    b2 = _batch([_sample(6), _sample(0), _sample(6), _sample(0)], [0.0, 0.0, 0.0, 0.0])
    m = step_metrics([b1, b2], num_generations=2, guidance_length=6, learning_rate=1e-4, reward_names=["acc"],
                     train_metrics={"loss": 0.0})
    assert m["frac_reward_zero_std"] == 3 / 4
    assert m["frac_groups_all_zero"] == 2 / 4
    assert m["frac_groups_all_one"] == 1 / 4
    assert m["reward_guided"] == pytest.approx(1 / 4)      # guided rewards 1, 0, 0, 0
    assert m["reward_unguided"] == pytest.approx(2 / 4)    # unguided rewards 1, 1, 0, 0
    assert m["guidance_length_injected"] == pytest.approx((6 + 4 + 6 + 6) / 4)
    assert m["guidance_length"] == 6.0
    # without dynamic sampling, what was generated is what is trained on
    assert (m["sampling_rounds"], m["sampled_groups"], m["sampled_frac_reward_zero_std"]) == (1, 4, 3 / 4)
    assert m["sampled_accuracy"] == 3 / 8
    # with it, each micro-batch says what it generated (rounds, groups, equal groups, guide sum)
    b1.sampling = {"rounds": 3, "groups": 6, "equal_groups": 4, "guide_sum": 4.0}
    b2.sampling = {"rounds": 1, "groups": 2, "equal_groups": 2, "guide_sum": 0.0}
    m = step_metrics([b1, b2], num_generations=2, guidance_length=6, learning_rate=1e-4, reward_names=["acc"],
                     train_metrics={"loss": 0.0})
    assert (m["sampling_rounds"], m["sampled_groups"], m["sampled_frac_reward_zero_std"]) == (3, 8, 6 / 8)
    assert m["sampled_accuracy"] == 4 / 16 and m["frac_reward_zero_std"] == 3 / 4
    unguided = step_metrics([_batch([_sample(0), _sample(0)], [0.0, 1.0])], num_generations=2, guidance_length=0,
                            learning_rate=1e-4, reward_names=["acc"], train_metrics={"loss": 0.0})
    row = json.loads(json.dumps(unguided))
    assert row["reward_guided"] is None and row["guidance_length_injected"] == 0.0
    assert all(not (isinstance(v, float) and math.isnan(v)) for k, v in row.items()
               if k in ("reward_guided", "reward_unguided", "guidance_length_injected", "frac_reward_zero_std"))


def test_step_metrics_mean_over_ranks_when_a_rank_lacks_a_kind(monkeypatch):
    """Two ranks, one without guided samples (its `reward_guided` is None, `accuracy_guided` NaN): the collective must
    have the same length on both ranks (else gloo/nccl hang or fail), and a mean is over the
    ranks that have a value. The all-reduce (sum) is played by hand: each rank's tensor is
    recorded, then every rank receives the sum."""
    import torch.distributed as dist

    from g2rpo_fast.distributed.process_group import DistState, all_reduce_mean

    nan = float("nan")
    ranks = [{"reward": 0.5, "reward_guided": None, "accuracy_guided": nan, "reward_unguided": 0.25,
              "empty": None, "name": "a"},
             {"reward": 1.0, "reward_guided": 0.75, "accuracy_guided": 1.0, "reward_unguided": None,
              "empty": None, "name": "b"}]
    sent = []
    monkeypatch.setattr(dist, "all_reduce", lambda t: sent.append(t.clone()))
    for m in ranks:
        all_reduce_mean(m, DistState(rank=0, world_size=2), "cpu")
    assert sent[0].shape == sent[1].shape
    total = sent[0] + sent[1]
    monkeypatch.setattr(dist, "all_reduce", lambda t: t.copy_(total))
    for m in ranks:
        out = all_reduce_mean(m, DistState(rank=0, world_size=2), "cpu")
        assert out["reward"] == 0.75 and out["reward_guided"] == 0.75 and out["reward_unguided"] == 0.25
        assert out["accuracy_guided"] == 1.0  # one rank's NaN (no guided sample) is not a value
        assert out["empty"] is None and out["name"] == m["name"]


def test_trl_keys_lengths_entropy_and_reward_spreads():
    """TRL's keys, each recomputed here from the samples: completions/* over the completion
    tokens (terminated: ended with a stop token), entropy weighted by generated tokens,
    reward_std over the step, reward_std_in_group within groups, rewards/<name>/mean|std."""
    import statistics

    from g2rpo_fast.rollout.composition import Sample
    from g2rpo_fast.trainer.metrics_log import completion_lengths, sampling_entropy

    samples = [Sample(0, [1], [2, 3], generated_ids=[4, 5, 6], truncated=False, entropy=1.0),
               Sample(0, [1], [], generated_ids=[4], truncated=True, entropy=4.0),
               Sample(1, [1], [], generated_ids=[4, 5], truncated=False, entropy=None)]
    lengths = completion_lengths(samples)
    assert lengths == {"completions/mean_length": 8 / 3, "completions/min_length": 1.0,
                       "completions/max_length": 5.0, "completions/clipped_ratio": pytest.approx(1 / 3),
                       "completions/mean_terminated_length": 3.5, "completions/min_terminated_length": 2.0,
                       "completions/max_terminated_length": 5.0}
    assert sampling_entropy(samples) == pytest.approx((1.0 * 3 + 4.0 * 1) / 4)
    assert sampling_entropy(samples[2:]) is None
    batch = _batch([_sample(0), _sample(0), _sample(0), _sample(0)], [0.0, 1.0, 1.0, 1.0])  # groups [0, 1] [1, 1]
    m = step_metrics([batch], num_generations=2, guidance_length=0, learning_rate=1e-4, reward_names=["acc"],
                     train_metrics={"loss": 0.0, "clip_ratio_low": 0.25})
    assert m["reward_std"] == pytest.approx(statistics.stdev([0.0, 1.0, 1.0, 1.0]))
    assert m["reward_std_in_group"] == pytest.approx((statistics.stdev([0.0, 1.0]) + 0.0) / 2)
    assert m["rewards/acc/mean"] == 0.75 and m["rewards/acc/std"] == pytest.approx(statistics.stdev([0, 1, 1, 1]))
    assert m["clip_ratio/low_mean"] == 0.25 and "clip_ratio_low" not in m


def test_group_outcomes_are_over_the_weighted_total_not_the_guidance_reward():
    """Two reward functions: the guidance reward (accuracy) is 0 everywhere, but the weighted
    total the advantages see differs within group 1 and is all 1 in group 2. The equal-reward
    fractions must follow the total (what GRPO learns from), not the guidance reward."""
    samples = [_sample(0) for _ in range(4)]
    scores = SimpleNamespace(total=[0.0, 0.5, 1.0, 1.0], guide=[0.0, 0.0, 0.0, 0.0],
                             per_func=[[0.0] * 4, [0.0, 0.5, 1.0, 1.0]])
    batch = SimpleNamespace(samples=samples, scores=scores, advantages=torch.zeros(4))
    m = step_metrics([batch], num_generations=2, guidance_length=0, learning_rate=1e-4,
                     reward_names=["accuracy", "other"], train_metrics={"loss": 0.0})
    assert m["frac_reward_zero_std"] == 1 / 2  # group 2 only; the guidance reward would say 2/2
    assert m["frac_groups_all_zero"] == 0.0    # the guidance reward would say 2/2
    assert m["frac_groups_all_one"] == 1 / 2
    assert m["accuracy"] == 0.0 and m["reward"] == pytest.approx(0.625)
