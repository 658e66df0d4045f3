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


def sample_with_signal(roll_out, *, group_size: int, target_groups: int, max_rounds: int, parts: int = 1,
                       agree=lambda full: full):
    """The generation rounds of one step's micro-batches (`parts`) under dynamic sampling
    (`max_rounds=1`: one round, as without it).

    `roll_out(round_index)` generates and scores the next fresh prompts of every micro-batch:
    a list of `parts` `(samples, scores)`, with `scores.total` (the rewards the advantages see)
    and `scores.guide` (the guidance reward). Rounds go on until every micro-batch holds
    `target_groups` groups with signal or `max_rounds` rounds ran; `agree(full)` answers whether
    that holds on every rank (ranks run the same number of rounds: the prompt stream is global).
    A full micro-batch still takes part in later rounds and drops what they bring. Returns, per
    micro-batch, its rounds `[(samples, scores, kept group indices)]` and the statistics of what
    it generated: `rounds`, `groups`, `equal_groups` (without signal), `guide_sum` (sum of the
    guidance reward).
    """
    groups = [SignalGroups(target_groups, group_size, max_rounds) for _ in range(parts)]
    rounds, guide_sums = [[] for _ in range(parts)], [0.0] * parts
    index = 0
    while True:
        generated = roll_out(index)
        if len(generated) != parts:
            raise ValueError(f"`roll_out` gave {len(generated)} micro-batches, expected {parts}")
        for k, (samples, scores) in enumerate(generated):
            rounds[k].append((samples, scores, groups[k].add(scores.total)))
            guide_sums[k] += float(sum(scores.guide))
        index += 1
        if index >= max_rounds or agree(all(g.full for g in groups)):
            break
    stats = [{"rounds": g.rounds, "groups": g.groups_seen, "equal_groups": g.equal_groups, "guide_sum": guide}
             for g, guide in zip(groups, guide_sums)]
    return rounds, stats
