"""Rewarding roll-outs (DESIGN.md section 2): every reward function on each completion's full text.

`reward_inputs` turns rows and their samples into TRL's reward signature (chat prompts get their
completion as an assistant message). `RewardScorer` holds a run's reward functions (names,
`module:function` or callables), their weights and the guidance reward; `score` rewards the full
completion text (guidance + generated) with each function (a failure scores 0 and is
reported), sums them with the weights and gives the guidance reward that drives the guidance
controller. The trainer scores every generated micro-batch through it; the evaluator
(`g2rpo_fast/evaluation.py`) uses `reward_inputs` with one reward function. With
`isolation="process"` the functions (`funcs`, `guidance_fn`) run in a worker process
(`worker.py`); `close()` stops it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .registry import func_name, get_reward_func, safe_reward_call, weighted_total
from .worker import RewardWorker, RewardWorkerError, isolated

ISOLATION = ("none", "process")


@dataclass
class Scores:
    total: list[float]  # [S] the weighted sum over the reward functions
    per_func: list[list[float]]  # [F][S] each reward function's rewards
    guide: list[float]  # [S] the guidance reward (accuracy by default)

    def select(self, indices) -> Scores:
        """The scores of the samples at `indices`, in that order."""
        return Scores([self.total[i] for i in indices], [[f[i] for i in indices] for f in self.per_func],
                      [self.guide[i] for i in indices])

    @staticmethod
    def concat(parts) -> Scores:
        """`parts` (at least one, with the same reward functions) one after the other."""
        return Scores([r for p in parts for r in p.total],
                      [[r for p in parts for r in p.per_func[k]] for k in range(len(parts[0].per_func))],
                      [r for p in parts for r in p.guide])


def reward_inputs(rows, samples, prompt_field: str):
    """(prompts, completions, columns) of TRL's reward signature, one entry per sample; chat
    prompts get their completion as an assistant message; `completion_ids` (guidance +
    generated tokens) among the columns, as TRL passes them."""
    prompts = [rows[s.prompt_index][prompt_field] for s in samples]
    conversational = bool(prompts) and isinstance(prompts[0], (list, tuple))
    completions = [[{"role": "assistant", "content": s.text}] if conversational else s.text for s in samples]
    columns = {k: [rows[s.prompt_index][k] for s in samples] for k in rows[0] if k != prompt_field}
    columns["completion_ids"] = [list(s.completion_ids) for s in samples]
    return prompts, completions, columns


class RewardScorer:
    """The run's reward functions (names, `module:function` or callables), their weights and the
    guidance reward (default: the first function); `errors` collects the failures reported since
    it was last emptied."""

    def __init__(self, reward_funcs, reward_weights=None, guidance_reward=None, reward_timeout=None,
                 isolation: str = "none"):
        if isolation not in ISOLATION:
            raise ValueError(f"`reward_isolation` must be one of {list(ISOLATION)}, got {isolation!r}")
        funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        try:
            self.funcs = [get_reward_func(f) for f in funcs]
        except ValueError as exc:
            raise ValueError(f"`reward_funcs`: {exc}") from None
        self.names = [f if isinstance(f, str) and ":" not in f else func_name(fn) for f, fn in zip(funcs, self.funcs)]
        self.weights = reward_weights or [1.0] * len(self.funcs)
        if len(self.weights) != len(self.funcs):
            raise ValueError(f"`reward_weights` has {len(self.weights)} entries for "
                             f"{len(self.funcs)} reward functions")
        # None: the first reward function drives the guidance controller and the held-out accuracy
        self.guidance_fn = self.funcs[0] if guidance_reward is None else get_reward_func(guidance_reward)
        self.guidance_index = next((i for i, f in enumerate(self.funcs) if f is self.guidance_fn), None)
        self.timeout = reward_timeout
        self.errors: list[str] = []
        self.worker = None
        if isolation == "process":
            # The worker gets names as names (it imports them) and callables pickled; each
            # function keeps its name, signature and attributes in the trainer.
            given = list(funcs) + ([] if self.guidance_index is not None else [guidance_reward])
            self.worker = RewardWorker(given)
            try:
                self.worker.start()  # a function the worker cannot load is refused now, not at step 1
            except RewardWorkerError as exc:
                raise ValueError(f"`reward_isolation`: process: {exc}") from None
            resolved = self.funcs + ([] if self.guidance_index is not None else [self.guidance_fn])
            wrapped = [isolated(self.worker, i, fn) for i, fn in enumerate(resolved)]
            self.funcs = wrapped[:len(self.funcs)]
            self.guidance_fn = wrapped[self.guidance_index if self.guidance_index is not None else -1]

    def close(self) -> None:
        """Stop the worker process (`isolation="process"`); a later call would start another."""
        if self.worker is not None:
            self.worker.stop()

    def score(self, prompts, completions, columns) -> Scores:
        """Each function's rewards are finite and within ±REWARD_LIMIT (`safe_reward_call`); the
        weighted total is summed in float64 and clipped to the same range, so the float32
        rewards and advantages never overflow."""
        per_func = []
        for fn in self.funcs:
            values, errors = safe_reward_call(fn, prompts, completions, reward_timeout=self.timeout, **columns)
            self.errors.extend(errors)
            per_func.append(values)
        total = [weighted_total([r[i] for r in per_func], self.weights) for i in range(len(completions))]
        if self.guidance_index is not None:
            guide = per_func[self.guidance_index]
        else:
            guide, errors = safe_reward_call(self.guidance_fn, prompts, completions, reward_timeout=self.timeout,
                                             **columns)
            self.errors.extend(errors)
        return Scores(total, per_func, guide)
