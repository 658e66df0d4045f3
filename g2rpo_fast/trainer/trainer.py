"""`G2RPOTrainer`: guided group roll-outs, rewards, packed policy forward, clipped loss.

Set-up (`__init__`) checks rewards, device and precision (`g2rpo_fast/runtime.py`) and every
data row before the model loads, then builds the policy and the engine (`components.py`). Then
each optimiser step (`training_step`) runs four phases:
  1. generate + score (`generate_rollouts`, `generation.py`, through `rollout/guided.py` and
     `rewards/scoring.py`): `per_device_train_batch_size // num_generations` prompts per
     micro-batch (seeded shuffle, or dataset order with `curriculum`), every micro-batch of the
     step in one engine call; the first `round(guidance_ratio·G)` samples of each group continue
     from prompt + the first ℓ tokens of the reference solution (ℓ from the guidance schedule);
     the engine reads the live weights; the full completion text (guidance + generated) is rewarded;
     with `dynamic_sampling`, more rounds of fresh prompts until every micro-batch holds only
     groups with signal;
  2. build the loss inputs (`batch.py`): group-normalised advantages over all G samples, the
     packed row (`packing/`), old log-probs (num_iterations > 1) and reference log-probs (beta > 0);
  3. optimise (`optimize.py`): packed padding-free forward, FusedLinearG2RPOLoss, backward
     (a micro-batch larger than `max_tokens_per_microbatch` in pieces of whole groups), AdamW step
     (with `skip_zero_signal_steps`, none of it in a step where no trained token has signal);
  4. log (`metrics_log.py`), update the guidance controller with the step's mean guidance
     reward, checkpoint (`state.py`, through `checkpointing/`).
With `num_iterations = μ > 1` one generated batch serves μ optimizer steps and the guidance
controller is updated once per generated batch (on the step that generated it).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings

import torch

from g2rpo_fast.callbacks import Callbacks
from g2rpo_fast.checkpointing.run_dir import METRICS_FILE, write_final_record
from g2rpo_fast.data.loading import is_embedded
from g2rpo_fast.distributed.process_group import (
    all_reduce_mean,
    any_rank,
    failure_notice,
    setup_distributed,
)
from g2rpo_fast.packing.policy_forward import make_loss_fn
from g2rpo_fast.rewards.scoring import RewardScorer
from g2rpo_fast.rollout.guided import Rollouts, stop_token_ids
from g2rpo_fast.runtime import resolve_runtime

from .arguments import init_signature, model_label, resolve_arguments, trl_signature
from .batch import RolloutBatch
from .components import TrainerComponents
from .generation import TrainerGeneration
from .held_out import HeldOutEvaluation
from .metrics_log import MetricsLog, generated_tokens, sequence_tokens, step_metrics, write_metrics
from .optimize import (
    accumulate_gradients,
    current_lr,
    dapo_num_items,
    has_signal,
    is_due,
    make_optimizer,
    make_scheduler,
    optimizer_step,
    run_length,
    skip_step,
)
from .state import TrainerState


class G2RPOTrainer(TrainerComponents, TrainerGeneration, TrainerState, HeldOutEvaluation):
    """TRL's `GRPOTrainer` signature (`arguments.trl_signature`); the older config-first form
    `G2RPOTrainer(config, model=..., tokenizer=...)` is accepted too (`arguments.py`)."""

    def __init__(self, *args, **kwargs):
        given = resolve_arguments(args, kwargs)
        # `args` is TRL's name for the config; `config` the older one: the same object
        self.args = self.config = cfg = given.config
        if cfg.warmup_notice():
            warnings.warn(cfg.warmup_notice(), UserWarning, stacklevel=2)
        model = given.model if not isinstance(given.model, (str, os.PathLike)) else None
        self.model_label = model_label(model if model is not None else cfg.model_name_or_path or "the built-in model")
        user_model = model is not None or not is_embedded(cfg.model_name_or_path)

        # ---- rewards, device, precision, attention, Liger (checked before any loading)
        self.rewards = RewardScorer(cfg.reward_funcs, cfg.reward_weights, cfg.guidance_reward, cfg.reward_timeout,
                                    cfg.reward_isolation)
        from g2rpo_fast.rewards import check_code_sandbox

        check_code_sandbox(cfg.code_sandbox, self.rewards.funcs + [self.rewards.guidance_fn])
        self.dist = setup_distributed(cfg.dist_timeout_s, cpu_collectives=cfg.fsdp_cpu_offload)
        self.device = self._pick_device()
        self.runtime = resolve_runtime(cfg, self.device)
        self.sharded = cfg.fsdp and self.dist.world_size > 1
        if self.sharded and self.runtime.compute_dtype == torch.float16:
            raise ValueError("`fsdp` with `torch_dtype: float16` is not supported (its loss scaling would need "
                             "a sharded GradScaler): use bfloat16")

        # ---- data (every row checked before the model is loaded), tokenizer, model
        self._load_datasets(given.train_dataset, given.eval_dataset, user_model)
        self.loss_fn = make_loss_fn(cfg)  # after the data: a set without reference solutions trains unguided
        self._load_policy(model, given.processing_class,
                          given=(given.train_dataset is not None, given.eval_dataset is not None),
                          peft_config=given.peft_config)
        self.engine = self._make_engine()
        if self.sharded and not self.engine.packed:
            raise ValueError("`fsdp`: the roll-out engine runs this model family through the model's own forward, "
                             "whose FSDP hooks would reshard the layers in mid-roll-out; use fsdp: false (DDP)")
        self.rollouts = Rollouts(self.engine, self.tokenizer, self.model, prompt_field=cfg.prompt_field,
                                 guidance_field=cfg.guidance_field, max_prompt_length=cfg.max_prompt_length,
                                 stop_token_ids=stop_token_ids(self.tokenizer, self.model),
                                 chat_template_kwargs=cfg.chat_template_kwargs,
                                 sampling={"min_p": cfg.min_p or 0.0, "repetition_penalty": cfg.repetition_penalty})

        # ---- run length, optimisation and guidance
        from g2rpo_fast.guidance import make_guidance_schedule

        self.max_steps, self.steps_per_epoch = run_length(cfg, len(self.train_dataset), self.dist.world_size)
        optimizer, scheduler = given.optimizers
        self.optimizer = optimizer or make_optimizer(cfg, self.model.parameters(), self.sharded)
        self.scheduler = scheduler or make_scheduler(cfg, self.optimizer, self.max_steps)
        self.guidance = make_guidance_schedule(
            cfg.guidance_schedule, initial_length=cfg.guidance_initial_length, max_length=cfg.guidance_max_length,
            min_length=cfg.guidance_min_length, window=cfg.guidance_window,
            update_every=cfg.guidance_update_every, final_length=cfg.guidance_final_length,
            # the controller is updated once per generated batch, i.e. every num_iterations steps
            total_steps=max(1, math.ceil(self.max_steps / cfg.num_iterations)), max_factor=cfg.guidance_max_factor)
        self.step = 0
        self.data_position = 0  # prompts consumed, over all ranks
        self.buffer: list[RolloutBatch] | None = None  # generated micro-batches still to be trained on
        self.buffer_uses = 0
        self.buffer_guidance_length = None
        self.steps_skipped = 0  # optimizer steps skipped for want of signal (skip_zero_signal_steps)
        self.last_batches: list[RolloutBatch] = []  # the micro-batches of the last step (log_completions)
        self.history: list[dict] = []
        self.num_tokens = 0  # prompt + completion tokens generated, over all ranks (TRL's num_tokens)
        # transformers' TrainerCallbacks (TRL's `callbacks`): trainer.state / .control / .callback_handler
        self.callbacks = Callbacks(given.callbacks, cfg, self.model, self.tokenizer, self.optimizer, self.scheduler,
                                   max_steps=self.max_steps, steps_per_epoch=self.steps_per_epoch,
                                   is_main=self.is_main, is_local_main=self.dist.local_rank == 0)
        self.callback_handler = self.callbacks.handler
        self.add_callback, self.pop_callback = self.callback_handler.add_callback, self.callback_handler.pop_callback
        self.remove_callback = self.callback_handler.remove_callback
        self.callbacks.event("on_init_end")
        self.saved_metrics: list[dict] | None = None  # the loaded checkpoint's copy of the metrics

    @property
    def loss_fn(self):
        """The loss `(hidden, weight, bias, **loss_inputs) -> (loss, metrics)`; it runs inside the
        `PackedPolicy` call (replacing it here replaces it there)."""
        return self.policy.loss_fn if hasattr(self, "policy") else self._loss_fn

    @loss_fn.setter
    def loss_fn(self, fn) -> None:
        self._loss_fn = fn
        if hasattr(self, "policy"):
            self.policy.loss_fn = fn

    state = property(lambda self: self.callbacks.state, doc="transformers' TrainerState of the run")
    control = property(lambda self: self.callbacks.control, doc="the TrainerControl the callbacks left")

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    def _comm_device(self):
        return self.device if self.dist.backend == "nccl" else torch.device("cpu")

    # ------------------------------------------------------------------ phase 3: optimise
    def train_micro_batches(self, batches: list[RolloutBatch]) -> dict:
        """Backward over every micro-batch, then one optimiser step; the step's loss metrics."""
        cfg = self.config
        if cfg.skip_zero_signal_steps and cfg.beta == 0 and \
                not has_signal(batches, cfg.guidance_loss, self.dist, self._comm_device()):
            self.steps_skipped += 1
            return skip_step(self.optimizer, self.scheduler)
        num_items = None
        if cfg.loss_type == "dapo":
            num_items = dapo_num_items(batches, cfg.guidance_loss, self.dist, self._comm_device())
        sums = accumulate_gradients(batches, policy=self.policy_for_grad, grad_scaler=self.grad_scaler,
                                    num_items=num_items)
        sums["grad_norm"] = optimizer_step(self.model, self.optimizer, self.scheduler, self.grad_scaler,
                                           cfg.max_grad_norm)
        return sums

    def training_step(self) -> dict:
        """One optimizer step; returns its metrics (already averaged over ranks)."""
        cfg = self.config
        t0 = time.perf_counter()
        fresh = self.buffer is None
        if fresh:
            guidance_length = int(self.guidance.length)
            self.buffer = self.generate_rollouts(guidance_length)
            self.engine.free_kv_cache()  # the training step's peak must not hold the roll-out cache
            self.buffer_uses = 0
            self.buffer_guidance_length = guidance_length
        t1 = time.perf_counter()
        lr = current_lr(self.optimizer)  # the rate this step trains with (TRL logs it; the scheduler moves it after)
        train_metrics = self.train_micro_batches(self.buffer)
        t2 = time.perf_counter()
        batches = self.last_batches = self.buffer
        self.buffer_uses += 1
        if self.buffer_uses >= cfg.num_iterations:
            self.buffer = None

        # ---- phase 4: log
        m = step_metrics(batches, num_generations=cfg.num_generations, guidance_length=self.buffer_guidance_length,
                         learning_rate=lr, reward_names=self.rewards.names,
                         train_metrics=train_metrics)
        step_time = time.perf_counter() - t0
        # Completion tokens (generated, then trained on) per second of the whole step.
        m.update(tokens_per_s=generated_tokens(batches) / max(step_time, 1e-9), step_time=step_time,
                 rollout_time_s=t1 - t0, train_time_s=t2 - t1, num_tokens=sequence_tokens(batches) if fresh else 0)
        m = all_reduce_mean(m, self.dist, self._comm_device())
        self.num_tokens += round(m["num_tokens"] * self.dist.world_size)  # the mean over ranks, summed
        m["num_tokens"] = float(self.num_tokens)
        # Guidance controller: once per generated batch, with the mean guidance reward of all ranks
        # over every sample generated (dynamic sampling trains on a filtered subset).
        if fresh:
            self.guidance.update(m["sampled_accuracy"] if cfg.dynamic_sampling else m["accuracy"])
        self.step += 1
        m["step"] = self.step
        m["steps_skipped"] = self.steps_skipped
        m["epoch"] = self.step / self.steps_per_epoch  # TRL's: optimizer steps over the steps of an epoch
        m["guidance_length_next"] = float(self.guidance.length)
        return m

    # ------------------------------------------------------------------ main loop
    def train(self, resume_from_checkpoint=None) -> list[dict]:
        """Run to `max_steps`; `resume_from_checkpoint`: True (latest in output_dir) or a path."""
        try:
            return self._train(resume_from_checkpoint)
        except Exception as exc:
            if self.dist.world_size > 1:  # say which rank failed before torchrun stops the others
                print(failure_notice(self.dist, exc, self.config.dist_timeout_s), file=sys.stderr, flush=True)
            raise
        finally:  # Ctrl-C too: the progress bar and TensorBoard writer are closed
            if getattr(self, "metrics_log", None) is not None:
                self.metrics_log.close()

    def _train(self, resume_from_checkpoint) -> list[dict]:
        cfg = self.config
        out = cfg.output_dir
        metrics_path = os.path.join(out, METRICS_FILE)
        t0 = time.perf_counter()
        self.prepare_output_dir(resume=bool(resume_from_checkpoint))
        self.history = self._resume(resume_from_checkpoint, metrics_path)
        log = None
        if self.is_main:
            write_metrics(metrics_path, self.history)
            cfg.save_json(os.path.join(out, "config.json"))
            log = self.metrics_log = MetricsLog(metrics_path, self.max_steps, cfg, self.step,
                                                decode=self.rollouts.decode, reward_names=self.rewards.names)
        cb = self.callbacks
        cb.state.global_step = self.step
        cb.event("on_train_begin")
        if cfg.eval_on_start and self.step == 0 and self.eval_dataset is not None:
            self._evaluate_in_training(log)
        while self.step < self.max_steps:
            cb.event("on_step_begin")
            m = self.training_step()
            control = cb.step_done(self.step, m["epoch"], self.num_tokens)
            last = self.step >= self.max_steps
            if not last and (control.should_evaluate or is_due(cfg.eval_strategy, cfg.eval_steps or cfg.logging_steps,
                                                               self.step, self.steps_per_epoch)):
                m.update(self._evaluate_in_training(None))
            if self.rewards.errors:  # the failed calls, also warned and logged one line each
                m["reward_errors"] = len(self.rewards.errors)
                m["reward_failures"] = [e[:300] for e in self.rewards.errors[:10]]
                self.rewards.errors = []
            self.history.append(m)
            logs = log.log(self.step, m, self.last_batches) if log is not None else None
            if logs is not None:
                cb.log(logs)
            if not last and (control.should_save or is_due(cfg.save_strategy, cfg.save_steps, self.step,
                                                           self.steps_per_epoch)):
                self.save()
                cb.event("on_save")
            if any_rank(control.should_training_stop, self.dist, self._comm_device()):
                break  # a callback stopped the run: evaluated and saved as at its end
        if log is not None:
            log.close()
        self.final_eval = self._final_evaluation()
        self.save(export=True)  # under FSDP every rank writes its shards; the whole model too
        cb.event("on_save")
        if self.is_main:
            if self.final_eval:
                with open(os.path.join(out, "eval_results.json"), "w", encoding="utf-8") as fh:
                    json.dump(self.final_eval, fh, indent=2)
            if cfg.plots:
                from g2rpo_fast.plots import plot_metrics

                plot_metrics(self.history, out)
        if self.dist.world_size > 1:
            torch.distributed.barrier()  # rank 0 has finished writing
        if self.is_main:  # the very last act: only a run that got here has a final record
            write_final_record(out, {"step": self.step, "max_steps": self.max_steps,
                                     "train_runtime_s": round(time.perf_counter() - t0, 3),
                                     "final_eval": self.final_eval})
        cb.event("on_train_end")
        return self.history

    def close(self, failed: bool = False) -> None:
        """Tear down the process group this trainer started (torchrun runs); `failed`: after an
        exception, without the final barrier (the other ranks wait in another collective)."""
        from g2rpo_fast.distributed.process_group import teardown_distributed

        self.rewards.close()  # reward_isolation: process: the worker
        teardown_distributed(self.dist, failed=failed)


G2RPOTrainer.__init__.__signature__ = init_signature(trl_signature)  # what help() and IDEs show
