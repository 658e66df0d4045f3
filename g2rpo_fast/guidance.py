"""Guidance-length schedules: how many reference-solution tokens guided roll-outs receive.

`AdaptiveGuidance` is the "-A" of G²RPO-A (DESIGN.md section 7): after optimiser step k with
mean accuracy reward r_k, and p the mean of the previous min(window, k-1) step rewards,
    if r_k > 0 and p > 0:  ℓ <- clamp(int(ℓ · p / r_k), min_length, max_length)
so a falling reward gives more guidance and a rising one less. With `update_every > 1` the
rule is applied only on steps k that are multiples of it (rewards of every step still enter
the history): `update_every=3, window=2` is the released code's 3-step cycle.

`SparseAdaptiveGuidance` (`guidance_schedule: adaptive_sparse`) is a variant of that rule for
sparse rewards, where the paper's rule collapses ℓ (README, "The adaptive rule under sparse
rewards"): with the same r_k, p, window and cadence, and c = `max_factor` (> 1),
    factor = c            if r_k <= 0           (a zero-reward step counts as a fall)
             1 / c        if r_k > 0 and p <= 0 (a rise from zero)
             clamp(p / r_k, 1/c, c)  otherwise
    ℓ <- clamp(round_half_up(ℓ · factor), min_length, max_length)
so a step without reward raises ℓ instead of leaving it, one lucky step after zeros cuts ℓ
by at most c, and rounding to the nearest integer removes the paper's steady drift down.

`FixedGuidance`, `LinearGuidance` and `NoGuidance` are the baselines behind the same
interface: `.length`, `.update(step_reward) -> length`, `.state_dict()`, `.load_state_dict()`.
"""
from __future__ import annotations

import math


def _check_int(name, value, minimum):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")


def _check_reward(step_reward):
    if not isinstance(step_reward, (int, float)) or not math.isfinite(step_reward):
        raise ValueError(f"`step_reward` must be a finite number, got {step_reward!r}")
    return float(step_reward)


class _Schedule:
    """Shared bookkeeping: the step counter and the reward history, checkpointable."""

    def __init__(self):
        self.step = 0
        self.history: list[float] = []
        self.length = 0

    def state_dict(self) -> dict:
        return {"length": self.length, "step": self.step, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.length = int(state["length"])
        self.step = int(state["step"])
        self.history = [float(r) for r in state["history"]]

    def update(self, step_reward: float) -> int:
        r = _check_reward(step_reward)
        self.step += 1
        self.length = self._next_length(r)
        self.history.append(r)
        return self.length

    def _next_length(self, reward: float) -> int:
        return self.length


class AdaptiveGuidance(_Schedule):
    def __init__(self, initial_length: int, max_length: int, min_length: int = 1, window: int = 2,
                 update_every: int = 1):
        super().__init__()
        _check_int("min_length", min_length, 0)
        _check_int("max_length", max_length, 0)
        _check_int("initial_length", initial_length, 0)
        _check_int("window", window, 1)
        _check_int("update_every", update_every, 1)
        if min_length > max_length:
            raise ValueError(f"`min_length` ({min_length}) must be <= `max_length` ({max_length})")
        if not min_length <= initial_length <= max_length:
            raise ValueError(f"`initial_length` ({initial_length}) must lie in [min_length, max_length] "
                             f"= [{min_length}, {max_length}]")
        self.min_length, self.max_length = min_length, max_length
        self.window, self.update_every = window, update_every
        self.length = initial_length

    def _next_length(self, reward: float) -> int:
        previous = self.history[-self.window:]  # min(window, k-1) step rewards before this one
        if self.step % self.update_every != 0 or not previous:
            return self.length
        p = sum(previous) / len(previous)
        if reward > 0 and p > 0:
            return min(max(int(self.length * p / reward), self.min_length), self.max_length)
        return self.length


class SparseAdaptiveGuidance(AdaptiveGuidance):
    """The adaptive rule for sparse rewards (module docstring): zero-reward steps raise ℓ, the
    factor is clamped to [1/max_factor, max_factor], ℓ is rounded to the nearest integer."""

    def __init__(self, initial_length: int, max_length: int, min_length: int = 1, window: int = 2,
                 update_every: int = 1, max_factor: float = 2.0):
        super().__init__(initial_length, max_length, min_length, window, update_every)
        if isinstance(max_factor, bool) or not isinstance(max_factor, (int, float)) or \
                not math.isfinite(max_factor) or max_factor <= 1:
            raise ValueError(f"`max_factor` must be a finite number > 1, got {max_factor!r}")
        self.max_factor = float(max_factor)

    def _next_length(self, reward: float) -> int:
        previous = self.history[-self.window:]
        if self.step % self.update_every != 0 or not previous:
            return self.length
        p = sum(previous) / len(previous)
        c = self.max_factor
        if reward <= 0:
            factor = c
        elif p <= 0:
            factor = 1 / c
        else:
            factor = min(max(p / reward, 1 / c), c)
        # nearest integer, halves up; 1e-9 absorbs float error (0.3 / 0.4 * 10 = 7.4999...)
        return min(max(math.floor(self.length * factor + 0.5 + 1e-9), self.min_length), self.max_length)


class FixedGuidance(_Schedule):
    def __init__(self, length: int):
        super().__init__()
        _check_int("initial_length", length, 0)
        self.length = length


class NoGuidance(FixedGuidance):
    """Vanilla GRPO: ℓ = 0, so no roll-out is guided."""

    def __init__(self):
        super().__init__(0)


class LinearGuidance(_Schedule):
    """ℓ decays linearly from `initial_length` at step 0 to `final_length` at `total_steps`."""

    def __init__(self, initial_length: int, final_length: int, total_steps: int):
        super().__init__()
        _check_int("initial_length", initial_length, 0)
        _check_int("final_length", final_length, 0)
        _check_int("total_steps", total_steps, 1)
        self.initial_length, self.final_length, self.total_steps = initial_length, final_length, total_steps
        self.length = initial_length

    def _next_length(self, reward: float) -> int:
        frac = min(self.step / self.total_steps, 1.0)
        return round(self.initial_length + (self.final_length - self.initial_length) * frac)


SCHEDULES = ("adaptive", "adaptive_sparse", "fixed", "linear", "none")


def make_guidance_schedule(kind: str, *, initial_length: int, max_length: int, min_length: int = 1,
                           window: int = 2, update_every: int = 1, final_length: int = 0,
                           total_steps: int = 1, max_factor: float = 2.0) -> _Schedule:
    """Build the schedule named by `guidance_schedule` (adaptive | adaptive_sparse | fixed | linear | none)."""
    if kind == "adaptive":
        return AdaptiveGuidance(initial_length, max_length, min_length, window, update_every)
    if kind == "adaptive_sparse":
        return SparseAdaptiveGuidance(initial_length, max_length, min_length, window, update_every, max_factor)
    if kind == "fixed":
        return FixedGuidance(initial_length)
    if kind == "linear":
        return LinearGuidance(initial_length, final_length, total_steps)
    if kind == "none":
        return NoGuidance()
    raise ValueError(f"`guidance_schedule` must be one of {list(SCHEDULES)}, got {kind!r}")
