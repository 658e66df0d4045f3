"""`GuidedGRPOTrainer`: TRL's `GRPOTrainer` with G²RPO-A's guided roll-outs, the adaptive guidance
length ℓ, and (with `use_g2rpo_loss`) the fused G²RPO loss.

One generated batch (TRL's `_generate_and_score_completions`), on every process:
1. each sample's guidance (`guided_samples.sample_guidance`): the first round(αG) completions of
   every group get the first ℓ tokens of the row's reference solution;
2. TRL generates from prompt + guidance through its own path (`_generate_single_turn`:
   transformers generate, vLLM colocate or vLLM server); the guidance is put in front of the
   generated tokens, so the rewards see the full text and the training forward sees the
   sequence that was sampled;
3. TRL scores, gathers the rewards over processes and normalises each group (guided and
   unguided completions together);
4. `guidance_mask` marks the guidance tokens; with `guidance_loss="mask"` they leave the loss
   and dapo's token count (TRL's loss: folded into its `tool_mask`; ours: `guidance_mask`);
5. ℓ is updated from the gathered rewards, so every process computes the same ℓ, and logged
   with `reward_guided` and `reward_unguided`.
Evaluation is never guided. The schedule's state is saved in every checkpoint
(`g2rpo_guidance.json`) and restored on resume.
"""
from __future__ import annotations

import json
import math
import os
from typing import ClassVar

import torch
from accelerate.utils import is_peft_model
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer

from g2rpo_fast.guidance import make_guidance_schedule

from . import fused_loss
from .config import GuidedGRPOConfig
from .guided_samples import guidance_mask, join_guidance, sample_guidance

GUIDANCE_STATE_FILE = "g2rpo_guidance.json"
TESTED_TRL = "1.16.0"
# The GRPOTrainer methods this subclass overrides or calls (module docstring of the package).
TRL_SEAMS = ("_generate_and_score_completions", "_generate_single_turn", "_calculate_rewards", "_compute_loss",
             "_save_checkpoint", "_load_optimizer_and_scheduler")


class GuidedGRPOTrainer(GRPOTrainer):
    """`trl.GRPOTrainer` with G²RPO-A: same arguments, `args` a `GuidedGRPOConfig`."""

    _tag_names: ClassVar[list[str]] = ["trl", "grpo", "g2rpo"]

    def __init__(self, model, reward_funcs=None, args: GuidedGRPOConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, **kwargs):
        missing = [name for name in TRL_SEAMS if not callable(getattr(GRPOTrainer, name, None))]
        if missing:
            import trl

            raise ImportError(f"GuidedGRPOTrainer overrides GRPOTrainer's {missing}, which trl {trl.__version__} "
                              f"does not have (tested with trl {TESTED_TRL})")
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
            args = GuidedGRPOConfig(f"{name.split('/')[-1]}-G2RPO")
        elif not isinstance(args, GuidedGRPOConfig):
            raise ValueError(f"`args` must be a GuidedGRPOConfig (GRPOConfig plus the guidance fields), got "
                             f"{type(args).__name__}")
        if args.n_guided:
            for name in ("rollout_func", "tools", "environment_factory"):
                if kwargs.get(name):
                    raise ValueError(f"`{name}` with guided roll-outs is not supported yet: guidance goes through "
                                     "TRL's single-turn generation; set guidance_schedule='none' to use it")
        self._pending_guidance = None  # read once by _generate_single_turn
        self._gathered_rewards = None  # [N, F] of the last batch, from _calculate_rewards
        super().__init__(model, reward_funcs, args, train_dataset, eval_dataset, processing_class, **kwargs)
        if args.n_guided and self._is_vlm:
            raise ValueError("guided roll-outs with a vision-language processor are not supported yet: set "
                             "guidance_schedule='none'")
        if args.guidance_reward is not None and args.guidance_reward not in self.reward_func_names:
            raise ValueError(f"`guidance_reward` {args.guidance_reward!r} is not one of the reward functions "
                             f"{self.reward_func_names}")
        columns = getattr(self.train_dataset, "column_names", None)
        if args.n_guided and columns is not None and args.guidance_field not in columns:
            raise ValueError(f"`guidance_field`: the training data has no column {args.guidance_field!r} "
                             f"(columns: {columns})")
        self.guidance = make_guidance_schedule(
            args.guidance_schedule, initial_length=args.guidance_initial_length, max_length=args.guidance_max_length,
            min_length=args.guidance_min_length, window=args.guidance_window,
            update_every=args.guidance_update_every, final_length=args.guidance_final_length,
            total_steps=max(1, self._generated_batches(args)), max_factor=args.guidance_max_factor)
        self._g2rpo_loss = None
        if args.use_g2rpo_loss:
            plugin = args.deepspeed_plugin
            fused_loss.check_model_support(self.model, is_vlm=self._is_vlm,
                                           zero3=plugin is not None and plugin.zero_stage == 3,
                                           aux_loss=self.aux_loss_enabled)
            self._g2rpo_loss = fused_loss.loss_from_config(args)
            # The module TRL gave its fused LM head (the base model under PEFT: the adapter forwards kwargs).
            fused_loss.install_loss_forward(self.model.get_base_model() if is_peft_model(self.model) else self.model)

    @staticmethod
    def _generated_batches(args) -> int:
        """How many batches a run of `max_steps` generates (the linear schedule's length)."""
        per_batch = args.steps_per_generation * args.num_iterations
        return math.ceil(args.max_steps * args.gradient_accumulation_steps / per_batch) if args.max_steps > 0 else 1

    # ------------------------------------------------------------------ generation
    def _generate_and_score_completions(self, inputs):
        training = self.model.training
        length = self.guidance.length
        guided = training and self.args.n_guided > 0 and length > 0  # the same on every process
        if guided:
            first = self.accelerator.process_index * len(inputs)
            guidance = sample_guidance(inputs, self._tokenizer, self.args.guidance_field, first, self.num_generations,
                                       self.args.n_guided, length)
            self._pending_guidance = guidance
        else:
            guidance = [[] for _ in inputs]
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._pending_guidance = None
        lengths = [len(g) for g in guidance]
        output["guidance_mask"] = guidance_mask(lengths, output["completion_ids"].size(1), self.accelerator.device)
        if guided and self.args.guidance_loss == "mask":
            output["num_items_in_batch"] = self._trained_token_count(output)
        if training:
            self._after_batch(lengths, length)
        return output

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        guidance, self._pending_guidance = self._pending_guidance, None
        if guidance is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        if len(guidance) != len(prompt_ids):
            raise RuntimeError(f"{len(prompt_ids)} prompts reached generation for {len(guidance)} guided samples")
        generation_inputs = [list(p) + g for p, g in zip(prompt_ids, guidance)]
        # num_generations=1: vLLM's server mode asks n=num_generations completions of every
        # num_generations-th gathered prompt; guided and unguided samples of a group differ, so each
        # sample is its own request (vLLM's prefix cache still shares the prompt). The other paths
        # generate one completion per row whatever this is.
        completion_ids, logprobs = super()._generate_single_turn(generation_inputs, images, multimodal_fields, 1,
                                                                 has_tool_images)
        return join_guidance(guidance, completion_ids, logprobs)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._gathered_rewards = rewards
        return rewards

    def _trained_token_count(self, output) -> torch.Tensor:
        """dapo's `num_items_in_batch` without the guidance tokens, over all processes (as TRL counts)."""
        mask = output["completion_mask"] * (1 - output["guidance_mask"])
        if "tool_mask" in output:
            mask = mask * output["tool_mask"]
        return self.accelerator.gather(mask.sum()).sum()

    def _after_batch(self, lengths: list[int], length: int) -> None:
        """Log ℓ and the guided / unguided rewards, then update ℓ: every process sees the gathered
        rewards, so every process reaches the same ℓ."""
        rewards, self._gathered_rewards = self._gathered_rewards, None
        device = rewards.device
        guided = self.accelerator.gather(torch.tensor([n > 0 for n in lengths], device=device))
        unscorable = torch.isnan(rewards).all(dim=1)
        total = (rewards * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        total[unscorable] = torch.nan  # as TRL's logged `reward`
        metrics = self._metrics["train"]
        metrics["guidance_length"].append(float(length))
        metrics["reward_guided"].append(torch.nanmean(total[guided]).item())
        metrics["reward_unguided"].append(torch.nanmean(total[~guided]).item())
        if self.args.guidance_reward is None:
            driver = total
        else:
            driver = rewards[:, self.reward_func_names.index(self.args.guidance_reward)]
        step_reward = torch.nanmean(driver).item()
        if math.isfinite(step_reward):  # a batch no reward function scored leaves ℓ as it is
            self.guidance.update(step_reward)

    # ------------------------------------------------------------------ loss
    def _compute_loss(self, model, inputs):
        if self._g2rpo_loss is not None:
            return self._fused_loss(model, inputs)
        mask = inputs.get("guidance_mask")
        if self.args.guidance_loss == "mask" and mask is not None and bool(mask.any()):
            inputs = {**inputs, "tool_mask": inputs.get("tool_mask", 1) * (1 - mask)}
        return super()._compute_loss(model, inputs)

    def _fused_loss(self, model, inputs):
        args, training = self.args, self.model.training
        prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        kwargs = fused_loss.loss_inputs(inputs, args.beta, self.use_vllm and self.vllm_importance_sampling_correction)
        if args.loss_type == "dapo":
            kwargs["num_items_in_batch"] = fused_loss.dapo_token_count(
                inputs["num_items_in_batch"], self.accelerator.num_processes, self.current_gradient_accumulation_steps,
                args.steps_per_generation, training)
        with self.accelerator.autocast():
            loss, metrics = model(input_ids=input_ids, attention_mask=attention_mask,
                                  g2rpo_loss=(self._g2rpo_loss, completion_ids, kwargs))
        if args.loss_type != "dapo" and training:
            loss = loss / self.current_gradient_accumulation_steps
        self._log_loss_metrics(metrics, kwargs)
        return loss

    def _log_loss_metrics(self, metrics: dict, kwargs: dict) -> None:
        """TRL's keys, as global token means over the same tokens TRL's loss weighs."""
        weights = kwargs["completion_mask"].float()
        if self.args.guidance_loss == "mask" and kwargs["guidance_mask"] is not None:
            weights = weights * (1 - kwargs["guidance_mask"].float())
        count = weights.sum()

        def global_mean(value):
            totals = self.accelerator.reduce(torch.stack([value.float() * count, count]), reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        mode = "train" if self.model.training else "eval"
        if self.args.beta != 0.0:
            self._metrics[mode]["kl"].append(global_mean(metrics["kl"]))
        if self.args.importance_sampling_level == "sequence":
            return  # TRL's clip ratios are then means over sequences, which the loss's token means are not
        self._metrics[mode]["clip_ratio/low_mean"].append(global_mean(metrics["clip_ratio_low"]))
        self._metrics[mode]["clip_ratio/high_mean"].append(global_mean(metrics["clip_ratio_high"]))
        self._metrics[mode]["clip_ratio/region_mean"].append(global_mean(metrics["clip_ratio"]))

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            with open(os.path.join(self._get_output_dir(trial=trial), folder, GUIDANCE_STATE_FILE), "w") as fh:
                json.dump({"guidance_schedule": self.args.guidance_schedule, "state": self.guidance.state_dict()}, fh)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, GUIDANCE_STATE_FILE)
        if not os.path.exists(path):
            raise ValueError(f"resume_from_checkpoint: {checkpoint} has no {GUIDANCE_STATE_FILE} (not written by "
                             "GuidedGRPOTrainer), so the guidance schedule's state cannot be restored")
        with open(path) as fh:
            saved = json.load(fh)
        if saved["guidance_schedule"] != self.args.guidance_schedule:
            raise ValueError(f"`guidance_schedule` is {self.args.guidance_schedule!r}, but {checkpoint} was trained "
                             f"with {saved['guidance_schedule']!r}")
        self.guidance.load_state_dict(saved["state"])
