"""The one place where the contract tests touch the trainer's internals.

`record(trainer)` attaches three probes and returns the `Recording` they fill:
  * the roll-out engine's `generate` (prompts in, completions out, and a copy of the policy's
    weights at generation time, from which the tests compute old log-probs themselves);
  * the loss callable (what the trainer handed to the loss, under the public loss-API names:
    token_ids, advantages, completion_mask, guidance_mask, cu_seqlens, old_logps, ref_logps,
    num_items_in_batch);
  * the optimizer, through a step pre-hook: the weights the step's forwards used and the
    gradient the trainer produced, read from each parameter's `.grad`.
Everything else the tests check comes from the trainer's public surface (`train()`'s metrics)
and from reward functions the tests own. A restructuring of the trainer edits this file only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

LOSS_INPUT_NAMES = ("token_ids", "advantages", "completion_mask", "guidance_mask", "cu_seqlens", "old_logps",
                    "ref_logps", "num_items_in_batch")


@dataclass
class Rollout:
    inputs: list[list[int]]  # what the engine was asked to continue (prompt [+ guidance])
    outputs: list[list[int]]  # generated ids (stop token included when hit)
    weights: dict[str, torch.Tensor]  # the policy at generation time


@dataclass
class OptimizerStep:
    weights: dict[str, torch.Tensor]  # what the step's forwards saw
    grads: dict[str, torch.Tensor]  # what the trainer accumulated (None-grads as zeros)
    loss_calls: list[dict] = field(default_factory=list)


@dataclass
class Recording:
    rollouts: list[Rollout] = field(default_factory=list)
    steps: list[OptimizerStep] = field(default_factory=list)
    pending_loss_calls: list[dict] = field(default_factory=list)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def policy_model(trainer):
    return trainer.model


def record(trainer) -> Recording:
    rec = Recording()
    model = policy_model(trainer)

    generate = trainer.engine.generate

    per_micro_batch = trainer.config.per_device_train_batch_size

    def recording_generate(prompts, *args, **kwargs):
        weights = _snapshot(model)
        outs = generate(prompts, *args, **kwargs)
        # one engine call per step (its generation batch): one Rollout per micro-batch
        for a in range(0, len(prompts), per_micro_batch):
            part = slice(a, a + per_micro_batch)
            rec.rollouts.append(Rollout([list(p) for p in prompts[part]], [list(o.token_ids) for o in outs[part]],
                                        weights))
        return outs

    trainer.engine.generate = recording_generate

    loss_fn = trainer.loss_fn

    def recording_loss(*args, **kwargs):
        loss, metrics = loss_fn(*args, **kwargs)
        call = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()
                if k in LOSS_INPUT_NAMES}
        call["loss"] = float(loss.detach())
        rec.pending_loss_calls.append(call)
        return loss, metrics

    trainer.loss_fn = recording_loss

    def before_step(optimizer, args, kwargs):
        grads = {n: (torch.zeros_like(p) if p.grad is None else p.grad.detach().clone())
                 for n, p in model.named_parameters()}
        rec.steps.append(OptimizerStep(_snapshot(model), grads, rec.pending_loss_calls))
        rec.pending_loss_calls = []

    trainer.optimizer.register_step_pre_hook(before_step)
    return rec
