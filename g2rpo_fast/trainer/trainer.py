"""`G2RPOTrainer`: guided group roll-outs, rewards, packed policy forward, clipped loss.

One optimizer step (`train`):
  1. draw `per_device_train_batch_size // num_generations` prompts per micro-batch (seeded
     shuffle, or dataset order with `curriculum`), `gradient_accumulation_steps` micro-batches;
  2. build the groups: the first `round(guidance_ratio·G)` samples of each group continue from
     prompt + the first ℓ tokens of the reference solution (ℓ from the guidance schedule);
  3. roll out with `RolloutEngine` (reads the live weights), reward the full completion text
     (guidance + generated; weighted sum over reward functions, failures score 0);
  4. group-normalised advantages over all G samples; old log-probs (num_iterations > 1) and
     reference log-probs (beta > 0) without grad;
  5. packed padding-free forward, loss through FusedLinearG2RPOLoss, backward, AdamW step;
  6. update the guidance controller with the step's mean `guidance_reward`, log metrics,
     checkpoint.
With `num_iterations = μ > 1` one generated batch serves μ optimizer steps and the guidance
controller is updated once per generated batch (on the step that generated it).
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings

import numpy as np
import torch

from g2rpo_fast.data.validation import context_length_of

from . import packed_attention
from .checkpoint import (
    checkpoint_to_resume,
    clean_partial_checkpoints,
    load_model_weights,
    load_trainer_state,
    save_checkpoint,
    set_rng_state,
    warn_changed_config,
)
from .composition import assemble_samples, build_generation_inputs
from .config import G2RPOConfig
from .data import (
    check_columns,
    load_split,
    take_indices,
    validate_dataset,
    validate_dataset_for_model,
)
from .distributed import DistState, all_reduce_mean, setup_distributed
from .group_packing import pack_groups
from .policy_forward import (
    PolicyHidden,
    lm_head_params,
    make_loss_fn,
    pack_samples,
    packed_hidden,
    token_logps,
)
from .prefix_shared_attention import resolve_prefix_sharing
from .run_dir import RunSetupError, check_output_dir, delete_earlier_run
from .runtime import resolve_runtime

TIMING_KEYS = ("tokens_per_s", "step_time_s", "rollout_time_s", "train_time_s")


def _func_name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def make_engine(model, runtime=None):
    from g2rpo_fast.rollout import RolloutEngine

    if runtime is None:
        return RolloutEngine(model)
    return RolloutEngine(model, attn_backend=runtime.backend, dtype=runtime.compute_dtype)


class G2RPOTrainer:
    def __init__(self, config: G2RPOConfig, model=None, tokenizer=None, train_dataset=None, eval_dataset=None,
                 reward_funcs=None):
        if not isinstance(config, G2RPOConfig):
            raise ValueError(f"`config` must be a G2RPOConfig, got {type(config).__name__}")
        config.validate()
        self.config = cfg = config
        from g2rpo_fast.rewards import get_reward_func

        # ---- rewards (checked before any loading)
        funcs = reward_funcs if reward_funcs is not None else cfg.reward_funcs
        funcs = funcs if isinstance(funcs, (list, tuple)) else [funcs]
        try:
            self.reward_funcs = [get_reward_func(f) for f in funcs]
        except ValueError as exc:
            raise ValueError(f"`reward_funcs`: {exc}") from None
        self.reward_names = [f if isinstance(f, str) else _func_name(g) for f, g in zip(funcs, self.reward_funcs)]
        self.reward_names = [_func_name(g) if isinstance(n, str) and ":" in n else n
                             for n, g in zip(self.reward_names, self.reward_funcs)]
        self.reward_weights = cfg.reward_weights or [1.0] * len(self.reward_funcs)
        if len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"`reward_weights` has {len(self.reward_weights)} entries for "
                             f"{len(self.reward_funcs)} reward functions")
        guide_fn = get_reward_func(cfg.guidance_reward)
        self.guidance_reward_index = next((i for i, f in enumerate(self.reward_funcs) if f is guide_fn), None)
        self.guidance_reward_fn = guide_fn
        from g2rpo_fast.rewards import check_code_sandbox

        check_code_sandbox(cfg.code_sandbox, self.reward_funcs + [guide_fn])  # refuses before any loading

        # ---- device, precision, attention, Liger (checked before any loading)
        self.dist: DistState = setup_distributed()
        self.device = self._pick_device()
        self.runtime = resolve_runtime(cfg, self.device)

        # ---- data (every row checked before the model is loaded)
        self.train_dataset = train_dataset if train_dataset is not None else load_split(cfg, cfg.dataset_split, True)
        check_columns(self.train_dataset, cfg, self.reward_funcs + [guide_fn], "train dataset")
        validate_dataset(self.train_dataset, cfg, cfg.dataset_split, True,
                         source="train_dataset" if train_dataset is not None else None)
        eval_is_given = eval_dataset is not None
        if eval_dataset is None and cfg.eval_split and (cfg.eval_at_end or cfg.eval_steps):
            eval_dataset = load_split(cfg, cfg.eval_split, False)
            check_columns(eval_dataset, cfg, [guide_fn], "eval dataset")
            validate_dataset(eval_dataset, cfg, cfg.eval_split, False)
        elif eval_dataset is not None:
            check_columns(eval_dataset, cfg, [guide_fn], "eval dataset")
            validate_dataset(eval_dataset, cfg, cfg.eval_split, False, source="eval_dataset")
        self.eval_dataset = eval_dataset

        # ---- tokenizer, then prompts against it (chat template, context), then the model
        from .models import load_model, load_tokenizer, model_context_length

        if tokenizer is None:
            tokenizer = load_tokenizer(cfg.model_name_or_path)
        context = (context_length_of(model.config) if model is not None
                   else model_context_length(cfg.model_name_or_path))
        validate_dataset_for_model(self.train_dataset, cfg, tokenizer, context, cfg.dataset_split,
                                   source="train_dataset" if train_dataset is not None else None)
        if self.eval_dataset is not None:
            validate_dataset_for_model(self.eval_dataset, cfg, tokenizer, context, cfg.eval_split,
                                       source="eval_dataset" if eval_is_given else None)
        if model is None:
            model = load_model(cfg.model_name_or_path)
        # fp32 master weights whatever the compute dtype (runtime.py)
        self.model = model.to(self.device, dtype=torch.float32)
        self.tokenizer = tokenizer
        if cfg.use_liger_kernel:
            from g2rpo_fast.models.liger import apply_liger

            apply_liger(self.model)
        varlen_installed = packed_attention.install(self.model, self.runtime.backend)
        self.prefix_shared = resolve_prefix_sharing(cfg.prefix_shared_forward, self.model, varlen_installed)
        self.model.train()
        if cfg.gradient_checkpointing:
            if hasattr(self.model, "activation_checkpointing_enable"):  # the transformers 5 name
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(self.model.config, "use_cache"):
            self.model.config.use_cache = False  # the packed forward needs no KV cache
        self.autocast_dtype = self.runtime.autocast_dtype
        self.grad_scaler = self.runtime.grad_scaler()
        self.policy = PolicyHidden(self.model)
        self.policy_for_grad = self.policy
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.policy_for_grad = DDP(self.policy, device_ids=ids)
        self.ref_model = None
        if cfg.beta > 0:
            self.ref_model = copy.deepcopy(self.model).eval()
            self.ref_model.requires_grad_(False)
        self.engine = make_engine(self.model, self.runtime)
        self.loss_fn = make_loss_fn(cfg)
        self.stop_token_ids = self._stop_ids()

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
            total_steps=max(1, math.ceil(cfg.max_steps / cfg.num_iterations)))
        self.step = 0
        self.data_position = 0  # prompts consumed, over all ranks
        self.buffer = None  # generated micro-batches still to be trained on (num_iterations > 1)
        self.buffer_uses = 0
        self.history: list[dict] = []
        self.reward_errors: list[str] = []

    # ------------------------------------------------------------------ setup helpers
    def _pick_device(self) -> torch.device:
        want = self.config.device
        if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise ValueError("`device`: cuda requested but no CUDA device is available")
            index = self.dist.local_rank if self.dist.world_size > 1 else torch.cuda.current_device()
            return torch.device("cuda", index)
        return torch.device("cpu")

    def _stop_ids(self) -> list[int]:
        ids = set()
        for src in (getattr(self.tokenizer, "eos_token_id", None),
                    getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)):
            if isinstance(src, int):
                ids.add(src)
            elif isinstance(src, (list, tuple)):
                ids.update(int(x) for x in src)
        return sorted(ids)

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    # ------------------------------------------------------------------ tokenisation
    def encode_prompt(self, prompt) -> list[int]:
        tok = self.tokenizer
        if isinstance(prompt, (list, tuple)):  # chat messages
            text = tok.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        elif getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
        else:
            text = prompt
        ids = tok.encode(text, add_special_tokens=False)
        if self.config.max_prompt_length is not None and len(ids) > self.config.max_prompt_length:
            ids = ids[-self.config.max_prompt_length:]
        return ids

    def encode_guidance(self, solution) -> list[int]:
        return self.tokenizer.encode(str(solution), add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ rewards
    def _reward_inputs(self, rows, samples):
        cfg = self.config
        prompts = [rows[s.prompt_index][cfg.prompt_field] for s in samples]
        conversational = bool(prompts) and isinstance(prompts[0], (list, tuple))
        completions = [[{"role": "assistant", "content": s.text}] if conversational else s.text for s in samples]
        columns = {k: [rows[s.prompt_index][k] for s in samples] for k in rows[0] if k != cfg.prompt_field}
        return prompts, completions, columns

    def compute_rewards(self, rows, samples):
        """(total [S], per-function [F, S], guidance reward [S]) as float lists.

        Each function's rewards are finite and within ±REWARD_LIMIT (`safe_reward_call`); the
        weighted total is summed in float64 and clipped to the same range, so the float32
        rewards and advantages never overflow."""
        from g2rpo_fast.rewards import safe_reward_call
        from g2rpo_fast.rewards.registry import weighted_total

        prompts, completions, columns = self._reward_inputs(rows, samples)
        timeout = self.config.reward_timeout
        per_func = []
        for fn in self.reward_funcs:
            values, errors = safe_reward_call(fn, prompts, completions, reward_timeout=timeout, **columns)
            self.reward_errors.extend(errors)
            per_func.append(values)
        total = [weighted_total([r[i] for r in per_func], self.reward_weights) for i in range(len(samples))]
        if self.guidance_reward_index is not None:
            guide = per_func[self.guidance_reward_index]
        else:
            guide, errors = safe_reward_call(self.guidance_reward_fn, prompts, completions, reward_timeout=timeout,
                                             **columns)
            self.reward_errors.extend(errors)
        return total, per_func, guide

    # ------------------------------------------------------------------ roll-outs
    def _rows(self, indices):
        return [self.train_dataset[int(i)] for i in indices]

    def _sample_seeds(self, count: int, micro: int) -> list[int]:
        # Independent of global RNG state and of the batch layout: resume reproduces them.
        base = np.random.SeedSequence([self.config.seed, self.step, micro, self.dist.rank])
        return [int(x) for x in base.generate_state(count, dtype=np.uint64) % (2**62)]

    @torch.no_grad()
    def _logps_of(self, model, batch) -> torch.Tensor:
        hidden = packed_hidden(PolicyHidden(model), batch, self.autocast_dtype)
        hidden, weight, bias = self.runtime.loss_operands(hidden, *lm_head_params(model))
        return token_logps(hidden, weight, bias, batch.token_ids, self.config.temperature)

    def generate_micro_batch(self, micro: int, guidance_length: int) -> dict:
        cfg = self.config
        n_prompts = cfg.prompts_per_micro_batch
        world = self.dist.world_size
        global_idx = take_indices(len(self.train_dataset), self.data_position, n_prompts * world, cfg.seed,
                                  cfg.curriculum)
        self.data_position += n_prompts * world
        indices = global_idx[self.dist.rank * n_prompts:(self.dist.rank + 1) * n_prompts]
        rows = self._rows(indices)
        prompt_ids = [self.encode_prompt(r[cfg.prompt_field]) for r in rows]
        n_guided = cfg.n_guided
        solutions = None
        if n_guided and guidance_length:
            solutions = [self.encode_guidance(r[cfg.guidance_field]) for r in rows]
        samples = build_generation_inputs(prompt_ids, solutions, cfg.num_generations, n_guided, guidance_length)
        was_training = self.model.training
        self.model.eval()
        outputs = self.engine.generate([s.generation_input for s in samples], max_new_tokens=cfg.max_completion_length,
                                       temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                       seed=self._sample_seeds(len(samples), micro),
                                       stop_token_ids=self.stop_token_ids)
        self.model.train(was_training)
        assemble_samples(samples, outputs, self.decode, self.stop_token_ids)
        total, per_func, guide = self.compute_rewards(rows, samples)
        from g2rpo_fast.ops import group_advantages

        rewards = torch.tensor(total, dtype=torch.float32)
        advantages = group_advantages(rewards, cfg.num_generations, cfg.scale_rewards)
        row_tokens = cfg.packed_row_tokens if cfg.packed_row_tokens >= 0 else (0 if self.device.type == "cuda" else 512)
        pack = pack_groups if self.prefix_shared else pack_samples  # each group's prompt once, or per sample
        batch = pack(samples, self.device, cfg.mask_truncated_completions, row_tokens)
        mb = {"samples": samples, "batch": batch, "advantages": advantages.to(self.device), "rewards": total,
              "per_func": per_func, "guide": guide, "old_logps": None, "ref_logps": None}
        if cfg.num_iterations > 1:
            mb["old_logps"] = self._logps_of(self.model, batch)
        if self.ref_model is not None:
            mb["ref_logps"] = self._logps_of(self.ref_model, batch)
        return mb

    # ------------------------------------------------------------------ training
    def _num_items(self, micro_batches) -> float:
        from g2rpo_fast.loss.aggregation import num_items

        local = sum(num_items(mb["batch"].completion_mask, mb["batch"].guidance_mask, self.config.guidance_loss)
                    for mb in micro_batches)
        if self.dist.world_size > 1:
            t = torch.tensor([local], dtype=torch.float64, device=self._comm_device())
            torch.distributed.all_reduce(t)
            local = float(t.item()) / self.dist.world_size  # DDP averages the gradients over ranks
        return max(local, 1.0)

    def _comm_device(self):
        return self.device if self.dist.backend == "nccl" else torch.device("cpu")

    def train_micro_batches(self, micro_batches) -> dict:
        cfg = self.config
        ga = len(micro_batches)
        num_items = self._num_items(micro_batches) if cfg.loss_type == "dapo" else None
        weight, bias = lm_head_params(self.model)
        sums = {"loss": 0.0, "kl": 0.0, "clip_ratio_low": 0.0, "clip_ratio_high": 0.0, "clip_ratio": 0.0}
        for k, mb in enumerate(micro_batches):
            batch = mb["batch"]
            sync = k == ga - 1 or self.dist.world_size == 1
            ctx = self.policy_for_grad.no_sync() if not sync and hasattr(self.policy_for_grad, "no_sync") else _Null()
            with ctx:
                hidden = packed_hidden(self.policy_for_grad, batch, self.autocast_dtype)
                # the loss's matmuls in the compute dtype, its accumulation in fp32 (runtime.py)
                hidden, weight_c, bias_c = self.runtime.loss_operands(hidden, weight, bias)
                kwargs = dict(token_ids=batch.token_ids, advantages=mb["advantages"],
                              completion_mask=batch.completion_mask, guidance_mask=batch.guidance_mask,
                              cu_seqlens=batch.cu_seqlens, old_logps=mb["old_logps"], ref_logps=mb["ref_logps"])
                if num_items is not None:
                    kwargs["num_items_in_batch"] = num_items
                loss, metrics = self.loss_fn(hidden, weight_c, bias_c, **kwargs)
                scaled = loss if num_items is not None else loss / ga
                (scaled if self.grad_scaler is None else self.grad_scaler.scale(scaled)).backward()
            sums["loss"] += float(scaled.detach())
            for key in ("kl", "clip_ratio_low", "clip_ratio_high", "clip_ratio"):
                if key in metrics:
                    sums[key] += float(metrics[key]) / ga
        grad_norm = 0.0
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm and cfg.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm))
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        sums["grad_norm"] = grad_norm
        return sums

    def training_step(self) -> dict:
        """One optimizer step; returns its metrics (already averaged over ranks)."""
        cfg = self.config
        t0 = time.perf_counter()
        fresh = self.buffer is None
        guidance_length = int(self.guidance.length)
        if fresh:
            self.buffer = [self.generate_micro_batch(k, guidance_length)
                           for k in range(cfg.gradient_accumulation_steps)]
            self.engine.free_kv_cache()  # the training step's peak must not hold the roll-out cache
            self.buffer_uses = 0
            self.buffer_guidance_length = guidance_length
        t1 = time.perf_counter()
        train_metrics = self.train_micro_batches(self.buffer)
        t2 = time.perf_counter()
        mbs = self.buffer
        self.buffer_uses += 1
        if self.buffer_uses >= cfg.num_iterations:
            self.buffer = None
        samples = [s for mb in mbs for s in mb["samples"]]
        rewards = [r for mb in mbs for r in mb["rewards"]]
        guide = [r for mb in mbs for r in mb["guide"]]
        adv = torch.cat([mb["advantages"].float().cpu() for mb in mbs])
        groups = torch.tensor(rewards).view(-1, cfg.num_generations)
        unguided = [r for s, r in zip(samples, guide) if not s.guided]
        guided = [r for s, r in zip(samples, guide) if s.guided]
        gen_tokens = sum(len(s.generated_ids) for s in samples)
        m = {
            "reward": float(np.mean(rewards)),
            "reward_std": float(groups.std(dim=1).mean()) if cfg.num_generations > 1 else 0.0,
            "accuracy": float(np.mean(guide)),
            "accuracy_unguided": float(np.mean(unguided)) if unguided else float("nan"),
            "accuracy_guided": float(np.mean(guided)) if guided else float("nan"),
            "advantage_std": float(adv.std()) if adv.numel() > 1 else 0.0,
            "guidance_length": float(self.buffer_guidance_length),
            "guided_fraction": float(np.mean([s.guided for s in samples])),
            "completion_length": float(np.mean([len(s.completion_ids) for s in samples])),
            "generated_length": float(gen_tokens / max(len(samples), 1)),
            "truncated_ratio": float(np.mean([s.truncated for s in samples])),
            "learning_rate": float(self.scheduler.get_last_lr()[0]),
            **train_metrics,
        }
        for name, k in zip(self.reward_names, range(len(self.reward_funcs))):
            m[f"rewards/{name}"] = float(np.mean([r for mb in mbs for r in mb["per_func"][k]]))
        step_time = time.perf_counter() - t0
        # Completion tokens (generated, then trained on) per second of the whole step.
        m.update(tokens_per_s=gen_tokens / max(step_time, 1e-9), step_time_s=step_time,
                 rollout_time_s=t1 - t0, train_time_s=t2 - t1)
        m = all_reduce_mean(m, self.dist, self._comm_device())
        # Guidance controller: once per generated batch, with the mean guidance reward of all ranks.
        if fresh:
            self.guidance.update(m["accuracy"])
        self.step += 1
        m["step"] = self.step
        m["guidance_length_next"] = float(self.guidance.length)
        return m

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, dataset=None, max_prompts=None, max_new_tokens=None, temperature=0.0,
                 num_samples=1, prefix="eval") -> dict:
        """Held-out accuracy (the guidance reward, default accuracy), unguided roll-outs.

        Greedy by default (`{prefix}_accuracy`); with `temperature > 0`, `num_samples` sampled
        completions per prompt (seeded by `config.seed`) and their mean accuracy.
        """
        from g2rpo_fast.rewards import safe_reward_call

        cfg = self.config
        dataset = dataset if dataset is not None else self.eval_dataset
        if dataset is None:
            return {}
        n = len(dataset) if max_prompts is None else min(len(dataset), max_prompts)
        idx = list(range(self.dist.rank, n, self.dist.world_size))
        rows = [dataset[i] for i in idx for _ in range(num_samples)]
        correct = 0.0
        if rows:
            ids = [self.encode_prompt(r[cfg.prompt_field]) for r in rows]
            was_training = self.model.training
            self.model.eval()
            seeds = None
            if temperature > 0:
                seq = np.random.SeedSequence([cfg.seed, 10**6 + self.dist.rank])
                seeds = [int(x) for x in seq.generate_state(len(ids), dtype=np.uint64) % (2**62)]
            outs = self.engine.generate(ids, max_new_tokens=max_new_tokens or cfg.max_completion_length,
                                        temperature=temperature, top_p=cfg.top_p if temperature > 0 else 1.0,
                                        top_k=cfg.top_k if temperature > 0 else 0, seed=seeds,
                                        stop_token_ids=self.stop_token_ids)
            self.engine.free_kv_cache()
            self.model.train(was_training)
            texts = []
            for o in outs:
                t = list(o.token_ids)
                if t and t[-1] in self.stop_token_ids:
                    t = t[:-1]
                texts.append(self.decode(t))
            prompts = [r[cfg.prompt_field] for r in rows]
            conv = isinstance(prompts[0], (list, tuple))
            comps = [[{"role": "assistant", "content": t}] for t in texts] if conv else texts
            columns = {k: [r[k] for r in rows] for k in rows[0] if k != cfg.prompt_field}
            values, _errors = safe_reward_call(self.guidance_reward_fn, prompts, comps,
                                               reward_timeout=cfg.reward_timeout, **columns)
            correct = float(sum(values))
        totals = [correct, float(len(rows))]
        if self.dist.world_size > 1:
            t = torch.tensor(totals, dtype=torch.float64, device=self._comm_device())
            torch.distributed.all_reduce(t)
            totals = t.tolist()
        return {f"{prefix}_accuracy": totals[0] / max(totals[1], 1.0), f"{prefix}_count": int(totals[1])}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "guidance": self.guidance.state_dict(), "data_position": self.data_position,
                "buffer": _buffer_to_cpu(self.buffer), "buffer_uses": self.buffer_uses,
                "buffer_guidance_length": getattr(self, "buffer_guidance_length", None)}

    def save(self, output_dir=None) -> str | None:
        if not self.is_main:
            return None
        return save_checkpoint(output_dir or self.config.output_dir, self.step, self.model, self.tokenizer,
                               self.state_dict(), self.config, self.config.save_total_limit)

    def load(self, path: str) -> None:
        load_model_weights(self.model, path)
        state = load_trainer_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.guidance.load_state_dict(state["guidance"])
        self.data_position = int(state["data_position"])
        self.buffer = _buffer_to_device(state.get("buffer"), self.device)
        self.buffer_uses = int(state.get("buffer_uses", 0))
        self.buffer_guidance_length = state.get("buffer_guidance_length")
        self.step = int(state["step"])
        set_rng_state(state["rng"])

    # ------------------------------------------------------------------ run directory
    def prepare_output_dir(self, resume: bool) -> None:
        """Refuse an output dir that is not writable or holds another run (`run_dir`), put
        back or remove leftovers of an interrupted save, apply `overwrite_output_dir`."""
        cfg = self.config
        if self.is_main:
            check_output_dir(cfg.output_dir, resume, cfg.overwrite_output_dir)
            os.makedirs(cfg.output_dir, exist_ok=True)
            for line in clean_partial_checkpoints(cfg.output_dir):
                _notice(f"{cfg.output_dir}: {line}")
            if cfg.overwrite_output_dir and not resume:
                removed = delete_earlier_run(cfg.output_dir)
                if removed:
                    _notice(f"overwrite_output_dir: removed the earlier run's {', '.join(removed)} from "
                            f"{cfg.output_dir}")
        if self.dist.world_size > 1:
            torch.distributed.barrier()

    def _checkpoint_to_resume(self, resume) -> str:
        """`resume`: True (the newest checkpoint of output_dir that verifies) or a path.
        Rank 0 verifies and tells the others."""
        found = [None, None]
        if self.is_main:
            found = list(checkpoint_to_resume(self.config.output_dir, resume))
        if self.dist.world_size > 1:
            torch.distributed.broadcast_object_list(found, src=0)
        path, error = found
        if error:
            raise RunSetupError(error)
        return path

    # ------------------------------------------------------------------ main loop
    def train(self, resume_from_checkpoint=None) -> list[dict]:
        """Run to `max_steps`; `resume_from_checkpoint`: True (latest in output_dir) or a path."""
        cfg = self.config
        out = cfg.output_dir
        metrics_path = os.path.join(out, "metrics.jsonl")
        self.prepare_output_dir(resume=bool(resume_from_checkpoint))
        if resume_from_checkpoint:
            path = self._checkpoint_to_resume(resume_from_checkpoint)
            self.load(path)
            warn_changed_config(path, cfg)
            self.history = _read_metrics(metrics_path, upto=self.step)
        else:
            self.history = []
        if self.is_main:
            _write_metrics(metrics_path, self.history)
            cfg.save_json(os.path.join(out, "config.json"))
        bar = None
        if self.is_main and cfg.progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="g2rpo", dynamic_ncols=True)
        while self.step < cfg.max_steps:
            m = self.training_step()
            if cfg.eval_steps and self.step % cfg.eval_steps == 0 and self.step < cfg.max_steps:
                m.update(self.evaluate(max_prompts=cfg.num_eval_prompts))
            if self.reward_errors:
                m["reward_errors"] = len(self.reward_errors)
                self.reward_errors = []
            self.history.append(m)
            if self.is_main:
                with open(metrics_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(_jsonable(m)) + "\n")
                line = (f"step {self.step}/{cfg.max_steps} reward {m['reward']:.3f} acc {m['accuracy']:.3f} "
                        f"adv_std {m['advantage_std']:.3f} len {m['guidance_length']:.0f} loss {m['loss']:.4f} "
                        f"{m['step_time_s']:.1f}s")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(reward=f"{m['reward']:.3f}", acc=f"{m['accuracy']:.3f}",
                                    l=int(m["guidance_length"]))
                    if self.step % cfg.logging_steps == 0:
                        bar.write(line)
                elif self.step % cfg.logging_steps == 0:
                    print(line, flush=True)
            if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < cfg.max_steps:
                self.save()
        if bar is not None:
            bar.close()
        final = {}
        if cfg.eval_at_end and self.eval_dataset is not None:
            final = self.evaluate(max_prompts=cfg.num_eval_prompts)
            if cfg.eval_num_samples:
                final.update(self.evaluate(max_prompts=cfg.num_eval_prompts, temperature=cfg.temperature,
                                           num_samples=cfg.eval_num_samples, prefix="eval_sampled"))
        if self.is_main:
            self.save()
            if final:
                with open(os.path.join(out, "eval_results.json"), "w", encoding="utf-8") as fh:
                    json.dump(final, fh, indent=2)
            if cfg.plots:
                from .plots import plot_metrics

                plot_metrics(self.history, out)
        self.final_eval = final
        if self.dist.world_size > 1:
            torch.distributed.barrier()  # rank 0 has finished writing
        return self.history

    def close(self) -> None:
        """Tear down the process group this trainer started (torchrun runs)."""
        from .distributed import teardown_distributed

        teardown_distributed(self.dist)


def _notice(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _jsonable(m: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in m.items()}


def _write_metrics(path, history) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for m in history:
            fh.write(json.dumps(_jsonable(m)) + "\n")


def _read_metrics(path, upto: int) -> list[dict]:
    """The logged steps up to `upto` (the checkpoint's step). A line that is not a JSON
    object, such as the torn last line of a run killed mid-write or on a full disk, is
    skipped with a warning; the caller rewrites the file from what is kept."""
    if not os.path.exists(path):
        return []
    out, bad = [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                m = json.loads(line)
            except ValueError:
                m = None
            if not isinstance(m, dict) or not isinstance(m.get("step"), int):
                bad.append(number)
                continue
            if m["step"] <= upto:
                out.append(m)
    if bad:
        _notice(f"resume: {path}: skipped unreadable line(s) {bad} (torn by an interrupted write); the metrics "
                f"are kept up to step {upto}")
    return out


def _buffer_to_cpu(buffer):
    if buffer is None:
        return None
    return [{k: _to(v, "cpu") for k, v in mb.items()} for mb in buffer]


def _buffer_to_device(buffer, device):
    if buffer is None:
        return None
    return [{k: _to(v, device) for k, v in mb.items()} for mb in buffer]


def _to(v, device):
    """Tensors, and the tensor fields of a `PackedBatch` (its `row_splits` is a tuple), to `device`."""
    if isinstance(v, torch.Tensor):
        return v.to(device)
    if hasattr(v, "__dataclass_fields__") and hasattr(v, "cu_seqlens"):
        return type(v)(**{k: _to(getattr(v, k), device) for k in v.__dataclass_fields__})
    return v
