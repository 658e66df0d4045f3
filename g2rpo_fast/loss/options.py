"""`LossOptions`: the options of the G²RPO loss, validated once (TRL's names)."""
from __future__ import annotations

from dataclasses import dataclass

from g2rpo_fast.ops.checks import check_choice

LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")
IS_LEVELS = ("token", "sequence")
GUIDANCE_LOSS = ("mask", "include")
SCALE_REWARDS = ("group", "batch", "none")


@dataclass(frozen=True)
class LossOptions:
    """`beta`, `epsilon_low`/`epsilon_high`, `delta`, `loss_type` (grpo | bnpo | dapo | dr_grpo),
    `importance_sampling_level` (token | sequence), `max_completion_length` (dr_grpo's
    normaliser; None: T padded / the longest completion packed), `temperature`,
    `guidance_loss` (mask | include), `scale_rewards` (group | batch | none)."""

    beta: float = 0.0
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    delta: float | None = None
    loss_type: str = "grpo"
    importance_sampling_level: str = "token"
    max_completion_length: int | None = None
    temperature: float = 1.0
    guidance_loss: str = "mask"
    scale_rewards: str = "group"

    def __post_init__(self):
        check_choice(self.loss_type, "loss_type", LOSS_TYPES)
        check_choice(self.importance_sampling_level, "importance_sampling_level", IS_LEVELS)
        check_choice(self.guidance_loss, "guidance_loss", GUIDANCE_LOSS)
        check_choice(self.scale_rewards, "scale_rewards", SCALE_REWARDS)
        for name in ("beta", "epsilon_low", "epsilon_high"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"`{name}` must be a non-negative number, got {v!r}")
        if self.delta is not None and not (isinstance(self.delta, (int, float)) and self.delta > 1):
            raise ValueError(f"`delta` must be None or a number > 1, got {self.delta!r}")
        if self.max_completion_length is not None and self.max_completion_length < 1:
            raise ValueError(f"`max_completion_length` must be >= 1, got {self.max_completion_length}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"`temperature` must be a positive number, got {self.temperature!r}")
