"""`G2RPOTrainer`: guided group roll-outs, rewards, packed policy forward, clipped loss.

Set-up (`__init__`) checks rewards, device and precision (`g2rpo_fast/runtime.py`) and every
data row before the model loads, then builds the policy and the engine (`components.py`). Then
each optimiser step (`training_step`) runs four phases:
  1. generate + score (`generate_rollouts`, `generation.py`, through `rollout/guided.py` and
     `rewards/scoring.py`): `per_device_train_batch_size // num_generations` prompts per
     micro-batch (seeded shuffle, or dataset order with `curriculum`), every micro-batch of the
     step in one engine call; the first
     `round(guidance_ratio·G)` samples of each group continue from prompt + the first ℓ tokens of
     the reference solution (ℓ from the guidance schedule); the engine reads the live weights;
     the full completion text (guidance + generated) is rewarded; with `dynamic_sampling`, more
     rounds of fresh prompts until every micro-batch holds only groups with signal;
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

from g2rpo_fast.checkpointing.checkpoint import warn_changed_config
from g2rpo_fast.checkpointing.run_dir import METRICS_FILE, ended_early_notice, take_final_record, write_final_record
from g2rpo_fast.distributed.parallel import gathered_weights
from g2rpo_fast.distributed.process_group import all_reduce_mean, failure_notice, setup_distributed
from g2rpo_fast.evaluation import evaluate
from g2rpo_fast.packing.policy_forward import make_loss_fn
from g2rpo_fast.rewards.scoring import RewardScorer
from g2rpo_fast.rollout.guided import Rollouts, stop_token_ids
from g2rpo_fast.runtime import resolve_runtime

from .batch import RolloutBatch
from .components import TrainerComponents
from .config import G2RPOConfig
from .generation import TrainerGeneration
from .metrics_log import MetricsLog, generated_tokens, read_metrics, rebuild_metrics, step_metrics, write_metrics
from .optimize import accumulate_gradients, dapo_num_items, has_signal, optimizer_step, skip_step
from .state import TrainerState


class G2RPOTrainer(TrainerComponents, TrainerGeneration, TrainerState):
    def __init__(self, config: G2RPOConfig, model=None, tokenizer=None, train_dataset=None, eval_dataset=None,
                 reward_funcs=None):
        if not isinstance(config, G2RPOConfig):
            raise ValueError(f"`config` must be a G2RPOConfig, got {type(config).__name__}")
        config.validate()
        self.config = cfg = config
        if cfg.warmup_notice():
            warnings.warn(cfg.warmup_notice(), UserWarning, stacklevel=2)

        # ---- rewards, device, precision, attention, Liger (checked before any loading)
        self.rewards = RewardScorer(reward_funcs if reward_funcs is not None else cfg.reward_funcs,
                                    cfg.reward_weights, cfg.guidance_reward, cfg.reward_timeout,
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
        self.loss_fn = make_loss_fn(cfg)

        # ---- data (every row checked before the model is loaded), tokenizer, model
        self._load_datasets(train_dataset, eval_dataset)
        self._load_policy(model, tokenizer, given=(train_dataset is not None, eval_dataset is not None))
        self.engine = self._make_engine()
        if self.sharded and not self.engine.packed:
            raise ValueError("`fsdp`: the roll-out engine runs this model family through the model's own forward, "
                             "whose FSDP hooks would reshard the layers in mid-roll-out; use fsdp: false (DDP)")
        self.rollouts = Rollouts(self.engine, self.tokenizer, self.model, prompt_field=cfg.prompt_field,
                                 guidance_field=cfg.guidance_field, max_prompt_length=cfg.max_prompt_length,
                                 stop_token_ids=stop_token_ids(self.tokenizer, self.model))

        # ---- optimisation and guidance
        from transformers import get_scheduler

        from g2rpo_fast.guidance import make_guidance_schedule

        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.learning_rate,
                                           betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay)
        self.scheduler = get_scheduler(cfg.lr_scheduler_type, self.optimizer, num_warmup_steps=cfg.warmup_steps,
                                       num_training_steps=cfg.max_steps)
        self.guidance = make_guidance_schedule(
            cfg.guidance_schedule, initial_length=cfg.guidance_initial_length, max_length=cfg.guidance_max_length,
            min_length=cfg.guidance_min_length, window=cfg.guidance_window,
            update_every=cfg.guidance_update_every, final_length=cfg.guidance_final_length,
            # the controller is updated once per generated batch, i.e. every num_iterations steps
            total_steps=max(1, math.ceil(cfg.max_steps / cfg.num_iterations)), max_factor=cfg.guidance_max_factor)
        self.step = 0
        self.data_position = 0  # prompts consumed, over all ranks
        self.buffer: list[RolloutBatch] | None = None  # generated micro-batches still to be trained on
        self.buffer_uses = 0
        self.buffer_guidance_length = None
        self.steps_skipped = 0  # optimizer steps skipped for want of signal (skip_zero_signal_steps)
        self.history: list[dict] = []
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
        train_metrics = self.train_micro_batches(self.buffer)
        t2 = time.perf_counter()
        batches = self.buffer
        self.buffer_uses += 1
        if self.buffer_uses >= cfg.num_iterations:
            self.buffer = None

        # ---- phase 4: log
        m = step_metrics(batches, num_generations=cfg.num_generations, guidance_length=self.buffer_guidance_length,
                         learning_rate=self.scheduler.get_last_lr()[0], reward_names=self.rewards.names,
                         train_metrics=train_metrics)
        step_time = time.perf_counter() - t0
        # Completion tokens (generated, then trained on) per second of the whole step.
        m.update(tokens_per_s=generated_tokens(batches) / max(step_time, 1e-9), step_time_s=step_time,
                 rollout_time_s=t1 - t0, train_time_s=t2 - t1)
        m = all_reduce_mean(m, self.dist, self._comm_device())
        # Guidance controller: once per generated batch, with the mean guidance reward of all ranks
        # over every sample generated (dynamic sampling trains on a filtered subset).
        if fresh:
            self.guidance.update(m["sampled_accuracy"] if cfg.dynamic_sampling else m["accuracy"])
        self.step += 1
        m["step"] = self.step
        m["steps_skipped"] = self.steps_skipped
        m["guidance_length_next"] = float(self.guidance.length)
        return m

    # ------------------------------------------------------------------ evaluation
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
        self.history = []
        if resume_from_checkpoint:
            path = self._checkpoint_to_resume(resume_from_checkpoint)
            self.load(path)
            warn_changed_config(path, cfg)
        # No final record until this run reaches its end: an early end is never taken for a finished run.
        previous = take_final_record(out) if self.is_main else None
        if resume_from_checkpoint:
            logged = read_metrics(metrics_path)
            if self.is_main and previous is None:
                last = max((m["step"] for m in logged), default=None)
                warnings.warn(ended_early_notice(out, last, path), RuntimeWarning, stacklevel=2)
            self.history = rebuild_metrics(logged, self.saved_metrics, self.step, path)
        log = None
        if self.is_main:
            write_metrics(metrics_path, self.history)
            cfg.save_json(os.path.join(out, "config.json"))
            log = self.metrics_log = MetricsLog(metrics_path, cfg.max_steps, cfg.logging_steps, cfg.progress_bar,
                                                self.step, report_to=cfg.report_to)
        while self.step < cfg.max_steps:
            m = self.training_step()
            if cfg.eval_steps and self.step % cfg.eval_steps == 0 and self.step < cfg.max_steps:
                m.update(self.evaluate(max_prompts=cfg.num_eval_prompts))
            if self.rewards.errors:  # the failed calls, also warned and logged one line each
                m["reward_errors"] = len(self.rewards.errors)
                m["reward_failures"] = [e[:300] for e in self.rewards.errors[:10]]
                self.rewards.errors = []
            self.history.append(m)
            if log is not None:
                log.log(self.step, m)
            if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < cfg.max_steps:
                self.save()
        if log is not None:
            log.close()
        self.final_eval = self._final_evaluation()
        self.save(export=True)  # under FSDP every rank writes its shards; the whole model too
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
            write_final_record(out, {"step": self.step, "max_steps": cfg.max_steps,
                                     "train_runtime_s": round(time.perf_counter() - t0, 3),
                                     "final_eval": self.final_eval})
        return self.history

    def _final_evaluation(self) -> dict:
        cfg = self.config
        if not (cfg.eval_at_end and self.eval_dataset is not None):
            return {}
        final = self.evaluate(max_prompts=cfg.num_eval_prompts)
        if cfg.eval_num_samples:
            final.update(self.evaluate(max_prompts=cfg.num_eval_prompts, temperature=cfg.temperature,
                                       num_samples=cfg.eval_num_samples, prefix="eval_sampled"))
        return final

    def close(self, failed: bool = False) -> None:
        """Tear down the process group this trainer started (torchrun runs); `failed`: after an
        exception, without the final barrier (the other ranks wait in another collective)."""
        from g2rpo_fast.distributed.process_group import teardown_distributed

        self.rewards.close()  # reward_isolation: process: the worker
        teardown_distributed(self.dist, failed=failed)
