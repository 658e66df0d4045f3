"""TRL's `GRPOConfig` vocabulary (trl 1.16, with transformers' `TrainingArguments`) in `G2RPOConfig`.

Every name a TRL GRPO user may set is one of:
- a `G2RPOConfig` field of the same name and meaning (`DIFFERENT_DEFAULTS` lists the few
  whose default is not TRL's, with the reason);
- an alias (`ALIASES`): TRL's name for something one of our fields does (`use_cpu` -> `device`);
- unsupported (`UNSUPPORTED`): accepted at the values that mean what this trainer does anyway
  (TRL's default, usually), refused by name with the reason otherwise. Reading one back
  (`config.hub_model_id`, as a TRL callback may) gives the value set, else TRL's default.
Any other name is refused, with the closest names suggested. `docs/TRL_COMPAT.md` is the table for
readers; `tests/test_trl_compat.py` checks this module and the table against the installed trl.
"""
from __future__ import annotations

import difflib

ANY = object()  # UNSUPPORTED entries that accept every value: they have no effect here, as stated


def _group(reason: str, **defaults) -> dict:
    """{name: ((accepted values...), reason)}: each name accepts only its default."""
    return {name: ((default,), reason) for name, default in defaults.items()}


def _any(reason: str, **defaults) -> dict:
    return {name: ((ANY, default), reason) for name, default in defaults.items()}


_VLLM = ("vLLM is not used: roll-outs run in g2rpo_fast's own engine on the live weights (to keep vLLM, use "
         "g2rpo_fast.integrations.trl with TRL's GRPOTrainer)")
_HUB = "no hub upload during training: export a checkpoint (g2rpo-fast export) and push it yourself"
_DATALOADER = "prompts are taken from the data set by the trainer itself (seeded order), not through a DataLoader"
_LAUNCH = "runs are launched with torchrun and torch.distributed (DDP, or FSDP2 with `fsdp`), not accelerate"
_EVAL = ("evaluation is the held-out reward (`eval_accuracy`) of unguided roll-outs, not a loss over batches: "
         "this evaluation setting has no counterpart")
_LOSS_VARIANT = "not implemented in the fused G²RPO loss (loss_type grpo | bnpo | dapo | dr_grpo)"

UNSUPPORTED: dict[str, tuple[tuple, str]] = {
    # ---- optimisation
    **_group("AdamW only (optim adamw_torch | adamw_torch_fused)", optim_args=None, optim_target_modules=None),
    **_group("the dapo token count is always summed over ranks and accumulation steps (DESIGN.md, aggregation)",
             average_tokens_across_devices=True),
    **_group("no label smoothing in a policy-gradient loss", label_smoothing_factor=0.0),
    **_group("evaluation runs in the compute dtype (torch_dtype)", bf16_full_eval=False, fp16_full_eval=False),
    "tf32": ((None, False), "not set by the trainer: allow TF32 yourself (torch.backends.cuda.matmul."
                            "fp32_precision); bfloat16 is the default compute dtype on CUDA"),
    **_group("torch.compile of the whole step is not supported (the ops are custom ops that compile, DESIGN.md)",
             torch_compile=False, torch_compile_backend=None, torch_compile_mode=None),
    **_group("Liger is applied to RMSNorm, RoPE and SwiGLU by use_liger_kernel; per-kernel choices are not "
             "supported", liger_kernel_config=None),
    **_any("the packed training forward never uses a KV cache; the roll-out engine keeps its own", use_cache=False),
    **_group("no NEFTune noise in RL roll-outs", neftune_noise_alpha=None),
    **_group("not supported: the roll-out KV cache is freed before every training step instead",
             torch_empty_cache_steps=None),
    **_group("batch sizes are fixed (per_device_train_batch_size); no automatic search", auto_find_batch_size=False),
    **_group("a policy-gradient loss has no label columns", label_names=None, length_column_name="length",
             include_for_metrics=[]),
    **_group("mixture-of-experts auxiliary losses are not added", router_aux_loss_coef=None),
    # ---- logging
    **_group("metrics are logged every logging_steps optimizer steps (logging_strategy steps)",
             logging_strategy="steps"),
    **_any("metrics.jsonl keeps every value (a NaN or inf is written as null, never filtered)",
           logging_nan_inf_filter=True),
    "include_num_input_tokens_seen": (("no", False, ANY), "num_tokens (prompt and completion tokens seen, over all "
                                                          "ranks) is logged every step anyway"),
    **_any("rank 0 logs; transformers' log levels are set with its own logging utilities",
           log_level="passive", log_level_replica="warning", log_on_each_node=True),
    **_group("Trackio is not a report_to target here (none | tensorboard | wandb)", trackio_space_id=None,
             trackio_bucket_id=None, trackio_static_space_id=None),
    **_any("names the Trackio project in transformers; wandb's project is WANDB_PROJECT", project="huggingface"),
    **_any("transformers' debug switches do not apply to this loop", debug=""),
    **_any("no memory profiler reports", skip_memory_metrics=True),
    # ---- evaluation
    **_group(_EVAL, eval_delay=0, prediction_loss_only=False, eval_do_concat_batches=True,
             eval_use_gather_object=False, eval_accumulation_steps=None, batch_eval_metrics=False),
    **_any("the engine batches evaluation roll-outs itself (continuous batching)", per_device_eval_batch_size=8),
    **_group("evaluation draws one greedy completion per prompt, plus eval_num_samples sampled ones",
             num_generations_eval=None),
    **_group("no best-model tracking: every checkpoint is kept up to save_total_limit", load_best_model_at_end=False,
             metric_for_best_model=None, greater_is_better=None),
    # ---- checkpoints
    **_group("a checkpoint always holds what resuming needs (optimizer, scheduler, RNG, guidance, data position)",
             save_only_model=False, ignore_data_skip=False, restore_callback_states_from_checkpoint=False),
    **_group("rank 0 writes checkpoints (FSDP: every rank its shards, DCP)", save_on_each_node=False),
    **_group("no signal-triggered checkpoint: checkpoints are atomic and --resume continues from the newest",
             enable_jit_checkpoint=False),
    **_group(_HUB, push_to_hub=False, hub_token=None, hub_private_repo=None, hub_model_id=None,
             hub_strategy="every_save", hub_always_push=False, hub_revision=None, log_completions_hub_repo=None),
    # ---- data and determinism
    **_group("not supported: deterministic algorithms are not forced (seeded data order and sampling are)",
             full_determinism=False),
    **_group("the prompt order is seeded by seed", data_seed=None),
    **_group(_DATALOADER, dataloader_drop_last=False, dataloader_in_order=True),
    **_any(_DATALOADER + "; no effect", dataloader_num_workers=0, dataloader_pin_memory=True,
           dataloader_persistent_workers=False, dataloader_prefetch_factor=None,
           dataloader_multiprocessing_context=None),
    **_group("every column reaches the reward functions (TRL's GRPO default)", remove_unused_columns=False),
    **_group("roll-outs are packed without padding", pad_to_multiple_of="auto"),
    **_any("a script switch that the trainer itself does not read, as in transformers", do_train=False,
           do_eval=False, do_predict=False, local_rank=-1),
    # ---- distributed
    **_group(_LAUNCH, accelerator_config=None, parallelism_config=None, deepspeed=None, ddp_backend=None,
             ds3_gather_for_generation=True),
    **_group("DDP's options are fixed (every parameter takes part in every step)", ddp_find_unused_parameters=None,
             ddp_bucket_cap_mb=None, ddp_broadcast_buffers=None, ddp_static_graph=None),
    **_group("FSDP2 is configured by fsdp / fsdp_cpu_offload only", fsdp_config=None),
    # ---- generation
    **_group("sampling is set by temperature, top_p, top_k, min_p and repetition_penalty", generation_kwargs=None),
    **_group("the roll-out engine has its own paged KV cache", cache_implementation=None),
    **_group(_VLLM, use_vllm=False, vllm_mode="colocate", vllm_model_impl="vllm", vllm_enable_sleep_mode=False,
             vllm_structured_outputs_regex=None, vllm_server_base_url=None, vllm_server_host="0.0.0.0",
             vllm_server_port=8000, vllm_server_timeout=240.0, vllm_group_port=51216,
             vllm_gpu_memory_utilization=0.3, vllm_max_model_length=None, vllm_tensor_parallel_size=1,
             vllm_importance_sampling_cap=None),
    **_any("no effect without vLLM (as in TRL): roll-outs come from the policy being trained",
           vllm_importance_sampling_correction=True, vllm_importance_sampling_mode="sequence_mask",
           vllm_importance_sampling_clip_max=3.0, vllm_importance_sampling_clip_min=None),
    **_group("roll-outs run in g2rpo_fast's own engine (packed, continuous batching)",
             use_transformers_continuous_batching=False, transformers_continuous_batching_config=None,
             use_transformers_paged=False),
    **_group("no tool calling during roll-outs", max_tool_calling_iterations=None),
    # ---- loss
    **_group(_LOSS_VARIANT, sapo_temperature_neg=1.05, sapo_temperature_pos=1.0, vespo_k_pos=2.0,
             vespo_lambda_pos=3.0, vespo_k_neg=3.0, vespo_lambda_neg=2.0, top_entropy_quantile=1.0,
             entropy_coef=0.0, use_adaptive_entropy=False, off_policy_mask_threshold=None),
    **_any("used only with use_adaptive_entropy, which is not supported", entropy_coef_min=0.0, entropy_coef_max=1.0,
           entropy_coef_delta=0.005, entropy_target=0.2),
    **_group("rewards are summed with reward_weights, then normalised per group (sum_then_normalize)",
             multi_objective_aggregation="sum_then_normalize"),
    **_group("the reference policy stays the initial model (no TR-DPO syncing)", sync_ref_model=False,
             ref_model_mixup_alpha=0.6, ref_model_sync_steps=512),
    **_any("completions are logged as text (no multimodal content)", log_multimodal=True),
    **_group("every prompt's completions are logged", log_unique_prompts=False),
}


def _bool_not(value):
    return None if value is None else not value


def _sampling(value):
    if value in ("random", "sequential"):
        return value == "sequential"
    raise ValueError(f"`train_sampling_strategy`: {value!r} is not supported: 'random' (a seeded shuffle per epoch) "
                     f"or 'sequential' (curriculum: the data set's order)")


def _fp16(value):
    if not isinstance(value, bool):
        raise ValueError(f"`fp16` must be true or false, got {value!r}")
    return "float16" if value else None


def _use_cpu(value):
    if not isinstance(value, bool):
        raise ValueError(f"`use_cpu` must be true or false, got {value!r}")
    return "cpu" if value else None


# TRL name -> (our field, value -> our value or None (nothing to set), TRL's default)
ALIASES = {
    "use_cpu": ("device", _use_cpu, False),
    "fp16": ("torch_dtype", _fp16, False),
    "disable_tqdm": ("progress_bar", _bool_not, None),
    "ddp_timeout": ("dist_timeout_s", lambda v: v, 1800),
    "shuffle_dataset": ("curriculum", _bool_not, True),
    "train_sampling_strategy": ("curriculum", _sampling, "random"),
    "activation_checkpointing": ("gradient_checkpointing", lambda v: v, None),
    "activation_checkpointing_kwargs": ("gradient_checkpointing_kwargs", lambda v: v, None),
}

# Fields of ours with TRL's name and meaning but another default, and why.
DIFFERENT_DEFAULTS = {
    "use_bias_correction_kl": "false: the KL term is DESIGN.md's plain k3 estimator (TRL's before 1.x); true (the KL "
                              "times the importance ratio) is accepted only with beta 0, where it changes nothing, "
                              "since the fused loss kernels do not implement it",
    "gradient_checkpointing": "auto: on for CUDA (TRL's true), off on the CPU, where a run is small and recomputing "
                              "activations only costs time; true / false (TRL's booleans too) as TRL",
}
# TRL defaults that mean the same as ours, written differently.
EQUIVALENT_DEFAULTS = {
    "output_dir": "TRL's None means 'trainer_output', our default",
    "fsdp": "TRL's None (no FSDP) is our false",
}


def translate(values: dict, field_names) -> tuple[dict, dict]:
    """(our fields, the unsupported TRL names set) from constructor keywords: aliases folded into
    their field (a contradiction is a ValueError naming both), unsupported names checked,
    anything else refused by name."""
    fields = set(field_names)
    out, extras = {}, {}
    for name, value in values.items():
        if name in fields:
            out[name] = value
    for name, value in values.items():
        if name in fields:
            continue
        if name in ALIASES:
            target, convert, _default = ALIASES[name]
            converted = convert(value)
            if converted is None:
                continue
            if target in out and out[target] != converted and not (name == "fp16" and out[target] == "auto"):
                raise ValueError(f"`{name}` ({value!r}) and `{target}` ({out[target]!r}) disagree: give one")
            out[target] = converted
        elif name in UNSUPPORTED:
            accepted, reason = UNSUPPORTED[name]
            if ANY not in accepted and not any(_same(value, a) for a in accepted):
                shown = " or ".join(repr(a) for a in accepted)
                raise ValueError(f"`{name}`: {value!r} is not supported ({reason}); it can only be {shown}")
            extras[name] = value
        else:
            raise ValueError(unknown_name_message(name, fields))
    return out, extras


def _same(value, accepted) -> bool:
    return (type(value) is type(accepted) and value == accepted) or (value is None and accepted is None)


def unknown_name_message(name: str, fields) -> str:
    known = sorted(set(fields) | set(ALIASES) | set(UNSUPPORTED))
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    return f"`{name}`: unknown configuration field{hint}; see docs/TRL_COMPAT.md for TRL's names"


def trl_value(config, name: str):
    """A TRL name that is not one of our fields, read back: an alias from its field, an
    unsupported name as set (else TRL's default)."""
    if name in ALIASES:
        value = getattr(config, ALIASES[name][0])
        if name == "use_cpu":
            return value == "cpu"
        if name == "fp16":
            return value == "float16"
        if name in ("disable_tqdm", "shuffle_dataset"):
            return _bool_not(value)
        if name == "train_sampling_strategy":
            return "sequential" if value else "random"
        return value
    accepted, _reason = UNSUPPORTED[name]
    extras = config.__dict__.get("_trl_extras", {})
    return extras.get(name, next(a for a in accepted if a is not ANY))
