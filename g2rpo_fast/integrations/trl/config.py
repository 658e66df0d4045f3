"""`GuidedGRPOConfig`: TRL's `GRPOConfig` plus the guidance fields of G²RPO-A.

The added fields carry the names, meanings and defaults of `g2rpo_fast.G2RPOConfig`'s (read
there: `guidance_ratio`, `guidance_schedule`, `guidance_initial_length`, `guidance_max_length`,
`guidance_min_length`, `guidance_final_length`, `guidance_window`, `guidance_update_every`,
`guidance_max_factor`, `guidance_field`, `guidance_loss`, `guidance_reward`), plus `use_g2rpo_loss`. Two differ in
what they count, because TRL's loop is not ours:
- the schedule advances once per *generated batch* (TRL generates every
  `steps_per_generation * num_iterations` training steps; with the defaults, once per optimizer
  step, as in `G2RPOConfig`);
- `guidance_reward` names one of the trainer's reward functions (as TRL names them:
  `rewards/<name>/mean`); None (the default) drives ℓ with TRL's `reward` (the weighted sum).

Everything else is TRL's, unchanged. Bad values raise a `ValueError` that names the field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import GRPOConfig

SCHEDULES = ("adaptive", "adaptive_sparse", "fixed", "linear", "none")  # = g2rpo_fast.guidance.SCHEDULES
GUIDANCE_LOSS = ("mask", "include")
# TRL's loss types that FusedLinearG2RPOLoss computes (the same formulas, DESIGN.md section 6).
G2RPO_LOSS_TYPES = ("grpo", "bnpo", "dapo", "dr_grpo")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class GuidedGRPOConfig(GRPOConfig):
    """`trl.GRPOConfig` with G²RPO-A's guidance and the fused G²RPO loss (see the module docstring)."""

    guidance_ratio: float = field(default=0.25, metadata=_help(
        "Fraction of each group that is guided: the first round(ratio * num_generations) completions."))
    guidance_schedule: str = field(default="adaptive", metadata=_help(
        "adaptive (G²RPO-A) | adaptive_sparse (the rule for sparse rewards, README) | fixed | linear | none "
        "(TRL's GRPO, no guidance)."))
    guidance_initial_length: int = field(default=18, metadata=_help("Initial guidance length ℓ in tokens."))
    guidance_max_length: int = field(default=36, metadata=_help("Upper bound of ℓ (adaptive)."))
    guidance_min_length: int = field(default=1, metadata=_help("Lower bound of ℓ (adaptive)."))
    guidance_final_length: int = field(default=0, metadata=_help(
        "Final ℓ of the linear schedule (reached at the last generated batch of max_steps)."))
    guidance_window: int = field(default=2, metadata=_help(
        "Adaptive: number of previous batch rewards averaged into p."))
    guidance_update_every: int = field(default=1, metadata=_help(
        "Adaptive: apply the rule every this many generated batches."))
    guidance_max_factor: float = field(default=2.0, metadata=_help(
        "adaptive_sparse: the clamp c of the factor ℓ is multiplied by, in [1/c, c] (c > 1)."))
    guidance_field: str = field(default="solution", metadata=_help(
        "Dataset column holding the reference solution (the guidance source)."))
    guidance_loss: str = field(default="mask", metadata=_help(
        "mask: guidance tokens are context only | include: trained on (the authors' code)."))
    guidance_reward: str | None = field(default=None, metadata=_help(
        "Name of the reward function whose batch mean drives the adaptive rule (None: TRL's `reward`, "
        "the weighted sum of all reward functions)."))
    use_g2rpo_loss: bool = field(default=False, metadata=_help(
        "Compute the loss with g2rpo_fast's FusedLinearG2RPOLoss (Triton on CUDA, C++ on the CPU; the logits "
        "are never formed) instead of TRL's; loss_type grpo | bnpo | dapo | dr_grpo."))

    def __post_init__(self):
        super().__post_init__()
        self._check_guidance()
        if self.use_g2rpo_loss:
            self._check_g2rpo_loss()

    @property
    def n_guided(self) -> int:
        """Guided completions per group: round(guidance_ratio · G) (Python's round, as G2RPOConfig);
        0 without a guidance schedule."""
        if self.guidance_schedule == "none":
            return 0
        return round(self.guidance_ratio * self.num_generations)

    def _check_guidance(self) -> None:
        r = self.guidance_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or not 0 <= r <= 1:
            raise ValueError(f"`guidance_ratio` must be a finite number in [0, 1], got {r!r}")
        for name, choices in (("guidance_schedule", SCHEDULES), ("guidance_loss", GUIDANCE_LOSS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"`{name}` must be one of {list(choices)}, got {getattr(self, name)!r}")
        for name, low in (("guidance_initial_length", 0), ("guidance_max_length", 0), ("guidance_min_length", 0),
                          ("guidance_final_length", 0), ("guidance_window", 1), ("guidance_update_every", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"`{name}` must be an int >= {low}, got {v!r}")
        c = self.guidance_max_factor
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or not c > 1:
            raise ValueError(f"`guidance_max_factor` must be a finite number > 1, got {c!r}")
        if self.guidance_min_length > self.guidance_max_length:
            raise ValueError(f"`guidance_min_length` ({self.guidance_min_length}) must be <= `guidance_max_length` "
                             f"({self.guidance_max_length})")
        if self.guidance_schedule in ("adaptive", "adaptive_sparse") and not (
                self.guidance_min_length <= self.guidance_initial_length <= self.guidance_max_length):
            raise ValueError(f"`guidance_initial_length` ({self.guidance_initial_length}) must lie in "
                             f"[guidance_min_length, guidance_max_length] = "
                             f"[{self.guidance_min_length}, {self.guidance_max_length}]")
        if self.guidance_schedule == "linear" and self.max_steps <= 0:
            raise ValueError("`guidance_schedule` 'linear' decays over `max_steps`, which must be set (> 0)")
        if not isinstance(self.guidance_field, str) or not self.guidance_field.strip():
            raise ValueError(f"`guidance_field` must name a dataset column, got {self.guidance_field!r}")
        if self.guidance_reward is not None and (not isinstance(self.guidance_reward, str)
                                                 or not self.guidance_reward.strip()):
            raise ValueError(f"`guidance_reward` must be None or a reward function's name, got "
                             f"{self.guidance_reward!r}")
        if not isinstance(self.use_g2rpo_loss, bool):
            raise ValueError(f"`use_g2rpo_loss` must be true or false, got {self.use_g2rpo_loss!r}")

    def _check_g2rpo_loss(self) -> None:
        """TRL options the fused loss cannot reproduce are refused, never silently dropped."""
        if self.loss_type not in G2RPO_LOSS_TYPES:
            raise ValueError(f"`loss_type` {self.loss_type!r} is not computed by use_g2rpo_loss (it computes "
                             f"{list(G2RPO_LOSS_TYPES)}); set use_g2rpo_loss=False for TRL's loss")
        refused = {
            "top_entropy_quantile": self.top_entropy_quantile < 1.0,
            "entropy_coef": self.entropy_coef != 0.0,
            "use_adaptive_entropy": self.use_adaptive_entropy,
            "off_policy_mask_threshold": self.off_policy_mask_threshold is not None,
        }
        for name, on in refused.items():
            if on:
                raise ValueError(f"`{name}` needs the per-token entropies or log-probs before the loss, which "
                                 "use_g2rpo_loss never forms; leave it at TRL's default or set use_g2rpo_loss=False")
        if self.beta != 0.0 and self.use_bias_correction_kl:
            raise ValueError("`use_bias_correction_kl` multiplies the KL by the ratio, which the G²RPO loss does not: "
                             "set use_bias_correction_kl=False (or beta=0, or use_g2rpo_loss=False)")
        if self.beta != 0.0 and self.use_vllm and self.vllm_importance_sampling_correction:
            raise ValueError("`vllm_importance_sampling_correction` with beta != 0 is not computed by use_g2rpo_loss "
                             "(its kernels weigh the KL like the policy term): set beta=0, or turn the correction "
                             "off, or use_g2rpo_loss=False")
