"""The trainer's set-up before step 1 (`G2RPOTrainer.__init__` calls these in this order):

1. the device (`_pick_device`: the local rank's GPU under torchrun);
2. the data sets, every row checked before the model loads (`_load_datasets`);
3. the tokenizer, the prompts checked against it (chat template, context), then the policy
   (`_load_policy`): fp32 master weights, Liger, the packed varlen attention and prefix sharing
   (`packing/`), gradient checkpointing (`auto`: on for CUDA), the frozen reference model (beta > 0), the
   `PackedPolicy` that DDP wraps or FSDP2 shards (`distributed/parallel.py`);
4. the roll-out engine over the live weights (`_make_engine`), sized for the generation batch
   and, on CUDA, by the memory plan (`plan_memory`: KV cache, training piece size).
A mixin of `G2RPOTrainer`: these are its methods, kept apart from the loop.
"""
from __future__ import annotations

import copy

import torch

from g2rpo_fast.data.sources import (
    check_columns,
    held_out,
    load_split,
    reward_columns,
    validate_dataset,
    validate_dataset_for_model,
    warn_if_training_rows,
)
from g2rpo_fast.data.validation import context_length_of
from g2rpo_fast.distributed.parallel import shard_fsdp, wrap_policy
from g2rpo_fast.models.adapters import adapters_disabled, is_peft_model, wrap_with_adapters
from g2rpo_fast.packing import packed_attention
from g2rpo_fast.packing.policy_forward import PackedPolicy
from g2rpo_fast.packing.prefix_shared_attention import resolve_prefix_sharing


class TrainerComponents:
    def _pick_device(self) -> torch.device:
        want = self.config.device
        if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise ValueError("`device`: cuda requested but no CUDA device is available")
            index = self.dist.local_rank if self.dist.world_size > 1 else torch.cuda.current_device()
            return torch.device("cuda", index)
        return torch.device("cpu")

    def _load_datasets(self, train_dataset, eval_dataset, user_model: bool) -> None:
        """The training rows (`train_dataset`, else `dataset_name`) and the held-out rows
        (`eval_dataset`, else `eval_dataset_name` or the training source's held-out split,
        `data.sources.held_out`), every row checked. A model of the user's never trains or
        evaluates on the built-in task unless `dataset_name` names it."""
        cfg, guide_fn = self.config, self.rewards.guidance_fn
        if train_dataset is None and cfg.dataset_name is None and user_model:
            raise ValueError(f"`train_dataset`: no data to train {self.model_label} on: pass train_dataset (a "
                             f"datasets.Dataset) or set dataset_name (the built-in arithmetic task goes with the "
                             f"built-in model only, unless dataset_name names it: 'embedded')")
        # every row must hold the columns its reward functions take (a null answer would score 0 silently)
        needs, eval_needs = reward_columns(self.rewards.funcs + [guide_fn]), reward_columns([guide_fn])
        self.train_dataset = train_dataset if train_dataset is not None else \
            load_split(cfg, cfg.dataset_split, True, required=needs)
        without_guidance_column(cfg, self.train_dataset)
        check_columns(self.train_dataset, cfg, self.rewards.funcs + [guide_fn], "train dataset")
        validate_dataset(self.train_dataset, cfg, cfg.dataset_split, True,
                         source="train_dataset" if train_dataset is not None else None, required=needs)
        self.eval_source = None  # (name, split) of held-out rows loaded from a name
        if eval_dataset is None and cfg.evaluates:
            self.eval_source = held_out(cfg, train_given=train_dataset is not None)
            if self.eval_source is not None:
                name, split = self.eval_source
                field = "eval_dataset_name" if cfg.eval_dataset_name is not None else "dataset_name"
                eval_dataset = load_split(cfg, split, False, name=name, field=field, required=eval_needs)
                check_columns(eval_dataset, cfg, [guide_fn], "eval dataset")
                validate_dataset(eval_dataset, cfg, split, False, name=name, required=eval_needs)
        elif eval_dataset is not None:
            check_columns(eval_dataset, cfg, [guide_fn], "eval dataset")
            validate_dataset(eval_dataset, cfg, cfg.eval_split or "eval", False, source="eval_dataset",
                             required=eval_needs)
        warn_if_training_rows(cfg, self.train_dataset, eval_dataset, self.eval_source)
        self.eval_dataset = eval_dataset

    def _load_policy(self, model, tokenizer, given, peft_config=None) -> None:
        """Tokenizer (the model's own unless `processing_class` is given), then the prompts
        against it (chat template, context), then the model (`model_init_kwargs`), with
        adapters (`peft_config`, or a PeftModel given: `models/adapters.py`)."""
        from g2rpo_fast.models.loading import (
            check_vocabulary,
            load_model,
            load_tokenizer,
            model_config,
            tokenizer_of_model,
        )

        cfg = self.config
        train_given, eval_given = given
        hub = {"trust_remote_code": cfg.trust_remote_code}
        if (cfg.model_init_kwargs or {}).get("revision") is not None:
            hub["revision"] = cfg.model_init_kwargs["revision"]
        if model is None:  # a path, a hub name or the built-in model, in model_name_or_path
            if tokenizer is None:
                tokenizer = load_tokenizer(cfg.model_name_or_path, **hub)
            config = model_config(cfg.model_name_or_path, **hub)
            embedding_rows = getattr(config.get_text_config() if hasattr(config, "get_text_config") else config,
                                     "vocab_size", None)
        else:
            if tokenizer is None:
                tokenizer = tokenizer_of_model(model, **hub)
            config = model.config
            embedding_rows = model.get_input_embeddings().num_embeddings
        check_vocabulary(tokenizer, embedding_rows, self.model_label)
        context = context_length_of(config.get_text_config() if hasattr(config, "get_text_config") else config)
        validate_dataset_for_model(self.train_dataset, cfg, tokenizer, context, cfg.dataset_split,
                                   source="train_dataset" if train_given else None, model_name=self.model_label)
        if self.eval_dataset is not None:
            name = None if self.eval_source is None else self.eval_source[0]
            validate_dataset_for_model(self.eval_dataset, cfg, tokenizer, context, cfg.eval_split or "eval",
                                       source="eval_dataset" if eval_given else None, name=name,
                                       model_name=self.model_label)
        if model is None:
            model = load_model(cfg.model_name_or_path, init_kwargs={**(cfg.model_init_kwargs or {}), **hub})
        # fp32 master weights whatever the compute dtype (runtime.py)
        model = model.to(self.device, dtype=torch.float32)
        self.tokenizer = self.processing_class = tokenizer  # TRL's name, and ours
        if cfg.use_liger_kernel:
            from g2rpo_fast.models.liger import apply_liger

            apply_liger(model.get_base_model() if is_peft_model(model) else model)
        if peft_config is not None:
            model = wrap_with_adapters(model, peft_config, cfg.seed)
        # with adapters: the PeftModel saves / loads / disables them; everything else runs the model inside it
        self.peft_model = model if is_peft_model(model) else None
        self.model = model.get_base_model() if self.peft_model is not None else model
        if self.peft_model is not None and self.sharded:
            raise ValueError("`peft_config`: adapters with `fsdp` are not supported: use DDP (fsdp: false), which "
                             "synchronises only the adapters' gradients")
        varlen_installed = packed_attention.install(self.model, self.runtime.backend)
        self.prefix_shared = resolve_prefix_sharing(cfg.prefix_shared_forward, self.model, varlen_installed)
        self.model.train()
        if cfg.disable_dropout:
            disable_dropout(self.model)
        # auto: on for CUDA (TRL's default is on), off on the CPU
        self.gradient_checkpointing = cfg.gradient_checkpointing == "true" or (
            cfg.gradient_checkpointing == "auto" and self.device.type == "cuda")
        if self.gradient_checkpointing:
            kwargs = {"use_reentrant": False, **(cfg.gradient_checkpointing_kwargs or {})}
            if hasattr(self.model, "activation_checkpointing_enable"):  # the transformers 5 name
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if hasattr(self.model.config, "use_cache"):
            self.model.config.use_cache = False  # the packed forward needs no KV cache
        self.grad_scaler = self.runtime.grad_scaler()
        self.ref_model = self.ref_policy = None
        if cfg.beta > 0 and peft_config is not None:  # fresh adapters: the reference is the base model, adapters off
            self.ref_policy = PackedPolicy(self.model, self.runtime, temperature=cfg.temperature,
                                           forward_context=adapters_disabled(self.peft_model))
        elif cfg.beta > 0:
            self.ref_model = copy.deepcopy(self.model).eval()
            self.ref_model.requires_grad_(False)
            self.ref_policy = PackedPolicy(self.ref_model, self.runtime, temperature=cfg.temperature)
            if self.sharded:  # sharded too: a full fp32 reference per GPU would undo FSDP's saving
                shard_fsdp(self.ref_policy, self.ref_model, self.runtime.compute_dtype, cfg.fsdp_cpu_offload)
        # PackedPolicy: one call per micro-batch (distributed/parallel.py); DDP wraps it, FSDP shards it in place
        self.policy = PackedPolicy(self.model, self.runtime, self.loss_fn, temperature=cfg.temperature)
        self.policy_for_grad = wrap_policy(self.policy, self.model, cfg, self.dist, self.device,
                                           self.runtime.compute_dtype)

    def _make_engine(self):
        """The roll-out engine over the live weights, sized for the whole generation batch: every
        completion of the step at once (`max_num_seqs`) and, on CUDA, the KV cache and the
        training pieces the memory plan chooses (`plan_memory`)."""
        from g2rpo_fast.memory_plan import engine_max_num_seqs
        from g2rpo_fast.rollout import RolloutEngine

        cfg = self.config
        self.memory_plan = self.plan_memory() if self.device.type == "cuda" else None
        chosen = self.memory_plan["settings"] if self.memory_plan else {}
        if cfg.max_tokens_per_microbatch != "auto":
            self.piece_tokens = cfg.max_tokens_per_microbatch
        elif chosen and chosen["pieces_per_micro_batch"] > 1:
            self.piece_tokens = chosen["max_tokens_per_microbatch"]
        else:
            self.piece_tokens = 0  # the CPU: no cut (memory is not the limit there)
        return RolloutEngine(self.model, attn_backend=self.runtime.backend, dtype=self.runtime.compute_dtype,
                             max_num_seqs=engine_max_num_seqs(cfg),
                             kv_cache_bytes=chosen.get("kv_cache_bytes") or None,
                             cuda_graphs={"true": True, "false": False}.get(cfg.cuda_graphs, "auto"),
                             lm_head_fp32=self.runtime.lm_head_fp32)

    def plan_memory(self, memory_bytes: int | None = None) -> dict:
        """The memory plan of this run on its device (`g2rpo_fast/memory_plan.py`; `g2rpo-fast plan`
        prints the same): per-phase bytes, and the KV cache and piece size that fit."""
        from g2rpo_fast import memory_plan

        if memory_bytes is None:
            memory_bytes = torch.cuda.get_device_properties(self.device).total_memory
        settings = memory_plan.settings_from_config(
            self.config, memory_bytes=memory_bytes, device=self.device.type,
            compute_bytes=self.runtime.compute_dtype.itemsize,
            attention="sdpa" if self.runtime.backend.name in ("sdpa", "cpu") else "flash",
            world_size=self.dist.world_size, prefix_shared=self.prefix_shared,
            gradient_checkpointing=self.gradient_checkpointing,
            max_tokens_per_microbatch=None if self.config.max_tokens_per_microbatch == "auto"
            else self.config.max_tokens_per_microbatch)
        return memory_plan.plan(memory_plan.ModelShape.from_config(self.model.config), settings)


def disable_dropout(model) -> None:
    """`disable_dropout` (TRL's): every dropout module of the model drops nothing."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def without_guidance_column(config, dataset) -> None:
    """A TRL data set has no reference solutions: with the default `guidance_field` missing, the
    run is vanilla GRPO (`guidance_schedule` none, in this run's private config), said once. A
    guidance column named otherwise must exist (`check_columns` refuses it by name)."""
    import warnings

    default = type(config).default_of("guidance_field")
    if config.n_guided == 0 or config.guidance_field != default or default in dataset.column_names:
        return
    warnings.warn(f"the training set has no {default!r} column (guidance_field): training without guidance, as "
                  f"GRPO; name the column of reference solutions in guidance_field to train with G²RPO-A's "
                  f"guidance", RuntimeWarning, stacklevel=4)
    config.guidance_schedule = "none"
