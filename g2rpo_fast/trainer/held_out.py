"""Held-out evaluation in a run: `evaluate` (the one evaluator, `g2rpo_fast/evaluation.py`, on the
live policy), during training (eval_strategy, eval_on_start, a callback's should_evaluate; a
metric-driven scheduler steps on it) and after the last step (`eval_at_end`). A mixin of
`G2RPOTrainer`: these are its methods, kept apart from the loop.
"""
from __future__ import annotations

import torch

from g2rpo_fast.distributed.parallel import gathered_weights
from g2rpo_fast.evaluation import evaluate

from .optimize import steps_on_metric


class HeldOutEvaluation:
    def evaluate(self, dataset=None, max_prompts=None, max_new_tokens=None, temperature=0.0,
                 num_samples=1, prefix="eval") -> dict:
        """Held-out accuracy (the guidance reward, default accuracy), unguided roll-outs.

        Greedy by default (`{prefix}_accuracy`); with `temperature > 0`, `num_samples` sampled
        completions per prompt (seeded by `config.seed`) and their mean accuracy.
        """
        dataset = dataset if dataset is not None else self.eval_dataset
        if dataset is None:
            return {}
        with torch.no_grad(), gathered_weights(self.policy):
            return evaluate(self.rollouts, dataset, self.rewards.guidance_fn, self.config, self.dist,
                            self._comm_device(), max_prompts=max_prompts, max_new_tokens=max_new_tokens,
                            temperature=temperature, num_samples=num_samples, prefix=prefix)

    def _evaluate_in_training(self, log) -> dict:
        """Held-out accuracy during training; a metric-driven scheduler steps on it."""
        if self.eval_dataset is None:
            return {}
        result = self.evaluate(max_prompts=self.config.num_eval_prompts)
        self.callbacks.event("on_evaluate", metrics=result)
        if steps_on_metric(self.scheduler):
            self.scheduler.step(result["eval_accuracy"])
        if log is not None:
            log.log_eval(self.step, result)
        return result

    def _final_evaluation(self) -> dict:
        cfg = self.config
        if not (cfg.eval_at_end and self.eval_dataset is not None):
            return {}
        final = self.evaluate(max_prompts=cfg.num_eval_prompts)
        if cfg.eval_num_samples:
            final.update(self.evaluate(max_prompts=cfg.num_eval_prompts, temperature=cfg.temperature,
                                       num_samples=cfg.eval_num_samples, prefix="eval_sampled"))
        self.callbacks.event("on_evaluate", metrics=final)
        return final
