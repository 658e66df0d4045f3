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
    load_split,
    reward_columns,
    validate_dataset,
    validate_dataset_for_model,
)
from g2rpo_fast.data.validation import context_length_of
from g2rpo_fast.distributed.parallel import shard_fsdp, wrap_policy
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

    def _load_datasets(self, train_dataset, eval_dataset) -> None:
        cfg, guide_fn = self.config, self.rewards.guidance_fn
        # every row must hold the columns its reward functions take (a null answer would score 0 silently)
        needs, eval_needs = reward_columns(self.rewards.funcs + [guide_fn]), reward_columns([guide_fn])
        self.train_dataset = train_dataset if train_dataset is not None else \
            load_split(cfg, cfg.dataset_split, True, needs)
        check_columns(self.train_dataset, cfg, self.rewards.funcs + [guide_fn], "train dataset")
        validate_dataset(self.train_dataset, cfg, cfg.dataset_split, True,
                         source="train_dataset" if train_dataset is not None else None, required=needs)
        if eval_dataset is None and cfg.eval_split and (cfg.eval_at_end or cfg.eval_steps):
            eval_dataset = load_split(cfg, cfg.eval_split, False, eval_needs)
            check_columns(eval_dataset, cfg, [guide_fn], "eval dataset")
            validate_dataset(eval_dataset, cfg, cfg.eval_split, False, required=eval_needs)
        elif eval_dataset is not None:
            check_columns(eval_dataset, cfg, [guide_fn], "eval dataset")
            validate_dataset(eval_dataset, cfg, cfg.eval_split, False, source="eval_dataset", required=eval_needs)
        self.eval_dataset = eval_dataset

    def _load_policy(self, model, tokenizer, given) -> None:
        """Tokenizer, then the prompts against it (chat template, context), then the model."""
        from g2rpo_fast.models.loading import load_model, load_tokenizer, model_context_length

        cfg = self.config
        train_given, eval_given = given
        if tokenizer is None:
            tokenizer = load_tokenizer(cfg.model_name_or_path)
        context = (context_length_of(model.config) if model is not None
                   else model_context_length(cfg.model_name_or_path))
        validate_dataset_for_model(self.train_dataset, cfg, tokenizer, context, cfg.dataset_split,
                                   source="train_dataset" if train_given else None)
        if self.eval_dataset is not None:
            validate_dataset_for_model(self.eval_dataset, cfg, tokenizer, context, cfg.eval_split,
                                       source="eval_dataset" if eval_given else None)
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
        # auto: on for CUDA (TRL's default is on), off on the CPU
        self.gradient_checkpointing = cfg.gradient_checkpointing == "true" or (
            cfg.gradient_checkpointing == "auto" and self.device.type == "cuda")
        if self.gradient_checkpointing:
            if hasattr(self.model, "activation_checkpointing_enable"):  # the transformers 5 name
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(self.model.config, "use_cache"):
            self.model.config.use_cache = False  # the packed forward needs no KV cache
        self.grad_scaler = self.runtime.grad_scaler()
        self.ref_model = self.ref_policy = None
        if cfg.beta > 0:
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
                             cuda_graphs={"true": True, "false": False}.get(cfg.cuda_graphs, "auto"))

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
