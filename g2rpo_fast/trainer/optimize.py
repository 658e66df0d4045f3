"""Phase 3 of a step: optimise on the generated micro-batches.

`accumulate_gradients`: for each micro-batch, one call of the `PackedPolicy` (packed forward, the
fused loss on hidden states × lm_head, its matmuls in the compute dtype, its accumulation in fp32:
`runtime.py`), backward. DDP synchronises on the last micro-batch only; FSDP reduce-scatters every
micro-batch (skipping it would hold a full unsharded fp32 gradient per GPU). The loss is divided by the number of
micro-batches, except with dapo, whose loss is already normalised by the step's global token
count (`dapo_num_items`). A micro-batch cut into pieces (`max_tokens_per_microbatch`) runs one
forward and backward per piece, each loss times its `loss_scale` (its share of the micro-batch's
loss), so the gradient is the uncut micro-batch's. `optimizer_step`: unscale (fp16), clip, step, schedule, zero.
"""
from __future__ import annotations

import contextlib
import math
import warnings

import torch

LOSS_METRICS = ("kl", "clip_ratio_low", "clip_ratio_high", "clip_ratio")


def dapo_num_items(batches, guidance_loss: str, dist, comm_device) -> float:
    """dapo's `num_items_in_batch`: the tokens that count (`loss.aggregation.num_items`) in all
    micro-batches of the step, averaged over ranks (DDP averages the gradients over ranks)."""
    from g2rpo_fast.loss.aggregation import num_items

    local = sum(num_items(p.packed.completion_mask, p.packed.guidance_mask, guidance_loss)
                for b in batches for p in b.training_pieces())
    if dist.world_size > 1:
        t = torch.tensor([local], dtype=torch.float64, device=comm_device)
        torch.distributed.all_reduce(t)
        local = float(t.item()) / dist.world_size
    return max(local, 1.0)


def has_signal(batches, guidance_loss: str, dist, comm_device) -> bool:
    """Whether any rank's micro-batches hold a token that is trained on (`token_weights` > 0)
    and has a non-zero advantage; all ranks get the same answer."""
    from g2rpo_fast.loss.aggregation import token_weights

    local = False
    for piece in (p for b in batches for p in b.training_pieces()):
        p = piece.packed
        per_token = torch.repeat_interleave(piece.advantages.float().to(p.token_ids.device),
                                            (p.cu_seqlens[1:] - p.cu_seqlens[:-1]).long())
        w = token_weights(p.completion_mask, p.guidance_mask, guidance_loss, per_token)
        local = local or bool(((per_token != 0) & (w > 0)).any())
    if dist.world_size > 1:
        t = torch.tensor([float(local)], device=comm_device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        local = bool(t.item() > 0)
    return local


def skip_step(optimizer, scheduler) -> dict:
    """A step without signal: no forward, no AdamW update, the schedule advances (as after an
    optimizer step: a scheduler that steps on the held-out accuracy waits for the evaluation).
    Its loss metrics are exact: every advantage is 0 and beta = 0, so the loss, the clip ratios
    (which count only tokens with A > 0 or A < 0), the KL term and the gradient are all 0."""
    if not steps_on_metric(scheduler):
        with warnings.catch_warnings():
            # torch warns when the schedule steps before the optimizer ever did (a skipped first
            # step): here that order is intended, the next step's learning rate is the right one
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": 0.0, **{key: 0.0 for key in LOSS_METRICS}, "grad_norm": 0.0}


def accumulate_gradients(batches, *, policy, grad_scaler=None, num_items=None) -> dict:
    """Backward over every micro-batch; returns the step's `loss` (summed as trained on) and
    the loss metrics averaged over micro-batches. `policy`: the `PackedPolicy` (wrapped in DDP
    or sharded by FSDP on several ranks), called once per micro-batch."""
    count = len(batches)
    sums = {"loss": 0.0, **{key: 0.0 for key in LOSS_METRICS}}
    pieces = [p for b in batches for p in b.training_pieces()]
    for k, piece in enumerate(pieces):
        last = k == len(pieces) - 1
        sync = contextlib.nullcontext() if last or not hasattr(policy, "no_sync") else policy.no_sync()
        with sync:
            kwargs = piece.loss_inputs()
            if num_items is not None:
                kwargs["num_items_in_batch"] = num_items
            loss, metrics = policy(piece.packed, kwargs)
            # a piece's loss is normalised as a batch of its own: `loss_scale` makes it its share
            scaled = loss * piece.loss_scale if num_items is not None else loss * piece.loss_scale / count
            (scaled if grad_scaler is None else grad_scaler.scale(scaled)).backward()
        sums["loss"] += float(scaled.detach())
        for key in LOSS_METRICS:
            if key in metrics:
                sums[key] += float(metrics[key]) * piece.metric_weight / count
    return sums


def run_length(config, num_prompts: int, world_size: int) -> tuple[int, int]:
    """(max_steps, steps per epoch): one epoch draws every training prompt once, a generation
    takes `prompts_per_micro_batch x gradient_accumulation_steps x world_size` prompts and serves
    `num_iterations` optimizer steps; with `max_steps` -1 the run is `num_train_epochs` epochs."""
    completions = config.per_device_train_batch_size * world_size * config.gradient_accumulation_steps
    if config.generation_batch_size not in (None, completions):
        raise ValueError(f"`generation_batch_size` ({config.generation_batch_size}) must be "
                         f"per_device_train_batch_size x world size x gradient_accumulation_steps = {completions}: "
                         f"each optimizer step generates its own roll-outs (num_iterations reuses them)")
    per_generation = config.prompts_per_micro_batch * config.gradient_accumulation_steps * world_size
    steps_per_epoch = math.ceil(num_prompts / per_generation) * config.num_iterations
    if config.max_steps > 0:
        return config.max_steps, steps_per_epoch
    return max(1, math.ceil(config.num_train_epochs * steps_per_epoch)), steps_per_epoch


def is_due(strategy: str, every, step: int, steps_per_epoch: int) -> bool:
    """Whether a `steps` / `epoch` / `no` strategy (eval, save) acts after optimizer step `step`."""
    if strategy == "steps":
        return bool(every) and step % every == 0
    return strategy == "epoch" and step % steps_per_epoch == 0


def make_optimizer(config, params, sharded: bool):
    """AdamW over the trainable parameters; `adamw_torch_fused` uses torch's fused kernel where
    every parameter is a plain tensor on one device type that has it (not FSDP's DTensors)."""
    params = [p for p in params if p.requires_grad]
    fused = config.optim == "adamw_torch_fused" and not sharded and bool(params)
    return torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                             eps=config.adam_epsilon, weight_decay=config.weight_decay, fused=fused or None)


def make_scheduler(config, optimizer, total_steps: int):
    """`transformers.get_scheduler` with `lr_scheduler_kwargs`; `warmup_steps` in (0, 1) is a
    fraction of `total_steps`. reduce_lr_on_plateau and greedy watch the held-out accuracy
    (higher is better: mode max unless the kwargs say otherwise)."""
    from transformers import get_scheduler

    from .config import METRIC_SCHEDULERS

    warmup = config.warmup_steps
    warmup = math.ceil(warmup * total_steps) if 0 < warmup < 1 else int(warmup)
    kwargs = dict(config.lr_scheduler_kwargs or {})
    if config.lr_scheduler_type in METRIC_SCHEDULERS:
        kwargs.setdefault("mode", "max")
    try:
        return get_scheduler(config.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                             num_training_steps=total_steps, scheduler_specific_kwargs=kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`lr_scheduler_kwargs`: {config.lr_scheduler_type} cannot be built with {kwargs}: {exc}") \
            from None


def steps_on_metric(scheduler) -> bool:
    """A scheduler that steps on the held-out accuracy (at each evaluation), not every step."""
    return callable(getattr(scheduler, "step", None)) and type(scheduler).__name__ in ("ReduceLROnPlateau",
                                                                                        "GreedyLR")


def current_lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def optimizer_step(model, optimizer, scheduler, grad_scaler=None, max_grad_norm=0.0) -> float:
    """Clip (when `max_grad_norm` > 0), step, schedule, zero; returns the gradient norm (0: not clipped)."""
    grad_norm = 0.0
    if grad_scaler is not None:
        grad_scaler.unscale_(optimizer)
    if max_grad_norm and max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor under FSDP
    if grad_scaler is not None:
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        optimizer.step()
    if not steps_on_metric(scheduler):
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
