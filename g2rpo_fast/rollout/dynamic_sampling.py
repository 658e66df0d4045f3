"""DAPO's dynamic sampling (arXiv 2503.14476, section 3.2): train only on groups that carry signal.

A group whose `G` rewards are all equal has every advantage 0: it teaches nothing, yet it
takes its share of the batch (and, with dapo's token normalisation, dilutes the others). With
`dynamic_sampling`, the trainer generates a micro-batch's prompts, keeps the groups whose rewards
differ, and generates further rounds of fresh prompts until `target_groups` groups with signal
are kept or `max_rounds` rounds have run (`SignalGroups`). DAPO's reference implementation stops
with an error when its cap is reached; a trainer cannot, so the micro-batch then trains on the
groups with signal it found (fewer than a full batch), or, when it found none, on the last
round's groups (a step without signal, which `skip_zero_signal_steps` skips).

`equal_reward_groups` is the one test of "all rewards equal" (the `frac_reward_zero_std` metric
uses it too): rewards within 1e-6 of the group's first.
"""
from __future__ import annotations

import numpy as np

EQUAL_ATOL = 1e-6


def equal_reward_groups(rewards, group_size: int) -> np.ndarray:
    """`[num_groups]` bool: whether every reward of the group equals its first (within 1e-6)."""
    groups = np.asarray(rewards, dtype=np.float64).reshape(-1, group_size)
    return np.isclose(groups, groups[:, :1], rtol=0.0, atol=EQUAL_ATOL).all(axis=1)


class SignalGroups:
    """The groups kept over the generation rounds of one micro-batch.

    `add(rewards)` takes one round's rewards (group after group) and returns the indices of the
    round's groups it keeps: those with signal, in order, until `target_groups` are kept (further
    ones are dropped). `done` is true once the batch is full or `max_rounds` rounds were added.
    """

    def __init__(self, target_groups: int, group_size: int, max_rounds: int):
        for name, value in (("target_groups", target_groups), ("group_size", group_size),
                            ("max_rounds", max_rounds)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
        self.target_groups, self.group_size, self.max_rounds = target_groups, group_size, max_rounds
        self.rounds = 0
        self.groups_seen = 0
        self.equal_groups = 0  # groups without signal among those generated
        self.kept = 0

    def add(self, rewards) -> list[int]:
        if self.rounds >= self.max_rounds:
            raise ValueError(f"`rewards`: {self.max_rounds} round(s) already added (max_rounds)")
        if len(rewards) == 0 or len(rewards) % self.group_size:
            raise ValueError(f"`rewards`: {len(rewards)} rewards are not whole groups of {self.group_size}")
        equal = equal_reward_groups(rewards, self.group_size)
        self.rounds += 1
        self.groups_seen += len(equal)
        self.equal_groups += int(equal.sum())
        room = self.target_groups - self.kept
        keep = [int(i) for i in np.flatnonzero(~equal)[:max(room, 0)]]
        self.kept += len(keep)
        return keep

    @property
    def full(self) -> bool:
        return self.kept >= self.target_groups

    @property
    def done(self) -> bool:
        return self.full or self.rounds >= self.max_rounds


def sample_with_signal(roll_out, *, group_size: int, target_groups: int, max_rounds: int,
                       agree=lambda full: full):
    """Generation rounds of one micro-batch under dynamic sampling (`max_rounds=1`: one round, as
    without it).

    `roll_out(round_index)` generates and scores the next round's fresh prompts: `(samples,
    scores)` with `scores.total` (the rewards the advantages see) and `scores.guide` (the
    guidance reward); `agree(full)` answers whether every rank's batch is full (ranks run the
    same number of rounds: the prompt stream is global). Returns the rounds as
    `[(samples, scores, kept group indices)]` and the statistics of everything generated:
    `rounds`, `groups`, `equal_groups` (without signal), `guide_sum` (sum of the guidance reward).
    """
    groups = SignalGroups(target_groups, group_size, max_rounds)
    rounds, guide_sum = [], 0.0
    samples, scores = roll_out(0)
    while True:
        rounds.append((samples, scores, groups.add(scores.total)))
        guide_sum += float(sum(scores.guide))
        if groups.rounds >= max_rounds or agree(groups.full):
            break
        samples, scores = roll_out(groups.rounds)
    stats = {"rounds": groups.rounds, "groups": groups.groups_seen, "equal_groups": groups.equal_groups,
             "guide_sum": guide_sum}
    return rounds, stats
