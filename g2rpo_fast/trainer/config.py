"""`G2RPOConfig`: every knob of a G²RPO-A run, in one dataclass.

Field names follow TRL's `GRPOConfig` where TRL has the knob (num_generations, beta, epsilon,
loss_type, ...). `per_device_train_batch_size` counts *completions* (as in TRL), so it must
be a multiple of `num_generations`: each micro-batch holds `per_device_train_batch_size //
num_generations` prompts with `num_generations` completions each.

Load from YAML with overrides: ``G2RPOConfig.from_yaml("run.yaml", max_steps=10)``. Bad values
are refused at construction with a `ValueError` that names the field, before any work.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

CHOICES = {
    "loss_type": ("grpo", "bnpo", "dapo", "dr_grpo"),
    "scale_rewards": ("group", "batch", "none"),
    "importance_sampling_level": ("token", "sequence"),
    "guidance_schedule": ("adaptive", "adaptive_sparse", "fixed", "linear", "none"),  # = guidance.SCHEDULES
    "guidance_loss": ("mask", "include"),
    # every transformers.get_scheduler name (tests/test_trl_compat.py checks them against SchedulerType)
    "lr_scheduler_type": ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                          "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                          "warmup_stable_decay", "greedy"),
    "optim": ("adamw_torch_fused", "adamw_torch"),
    "eval_strategy": ("no", "steps", "epoch"),
    "save_strategy": ("steps", "epoch", "no"),
    "device": ("auto", "cpu", "cuda"),
    "code_sandbox": ("auto", "bwrap", "namespace", "unsafe-process"),  # = rewards.sandbox.MODES
    "torch_dtype": ("auto", "float32", "bfloat16", "float16"),
    "attn_implementation": ("auto", "flash_attention_2", "torch_varlen", "sdpa"),
    "prefix_shared_forward": ("auto", "true", "false"),
    "gradient_checkpointing": ("auto", "true", "false"),
    "cuda_graphs": ("auto", "true", "false"),
    "reward_isolation": ("none", "process"),  # = rewards.scoring.ISOLATION
}
REPORT_TARGETS = ("tensorboard", "wandb")  # report_to: these, "none" or "all" (every one installed)
# schedulers that step on a metric: the held-out accuracy, at each evaluation
METRIC_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def accepts_trl_names(cls):
    """`G2RPOConfig(**kwargs)` takes TRL's `GRPOConfig` names too (`trl_names.py`): aliases are
    folded into their field, unsupported ones accepted at their no-op values or refused with
    the reason, unknown ones refused by name (a `ValueError`, never a `TypeError`). Like TRL's,
    the one positional argument is `output_dir`."""
    generated = cls.__init__

    @functools.wraps(generated)
    def __init__(self, *args, **kwargs):
        if len(args) > 1:
            raise ValueError("G2RPOConfig takes output_dir positionally and everything else by name")
        if args:
            if "output_dir" in kwargs:
                raise ValueError("`output_dir` given twice (positionally and by name)")
            kwargs["output_dir"] = args[0]
        from .trl_names import translate

        values, extras = translate(kwargs, cls.field_names())
        self.__dict__["_trl_extras"] = extras
        generated(self, **values)

    def __getattr__(self, name):
        from .trl_names import ALIASES, UNSUPPORTED, trl_value

        if name.startswith("_") or (name not in ALIASES and name not in UNSUPPORTED):
            raise AttributeError(f"{cls.__name__!r} object has no attribute {name!r}")
        return trl_value(self, name)

    cls.__init__ = __init__
    cls.__getattr__ = __getattr__
    return cls


@accepts_trl_names
@dataclass
class G2RPOConfig:
    """Configuration of `G2RPOTrainer` (see each field's ``metadata["help"]``)."""

    # ---- model and data
    model_name_or_path: str | None = _f(None, "HF hub name or local path of the policy; None or 'embedded': the "
                                              "built-in tiny Qwen3 warm-started on the addition task (no download).")
    model_init_kwargs: dict | None = _f(None, "Keyword arguments of the policy's from_pretrained when it is loaded "
                                              "from a path or hub name (TRL's name), e.g. {revision: main}; the "
                                              "weights are kept in float32 (torch_dtype sets the compute dtype).")
    trust_remote_code: bool = _f(False, "Let the model's and tokenizer's from_pretrained run code from the hub.")
    dataset_name: str | None = _f(None, "HF dataset name, local json/jsonl/parquet/csv file (optionally .gz) or "
                                        "directory, or 'embedded' (the built-in addition task). None: the built-in "
                                        "task with the built-in model; a model of your own needs its data.")
    dataset_config: str | None = _f(None, "HF dataset configuration name.")
    dataset_split: str = _f("train", "Split used for training.")
    eval_split: str | None = _f(None, "Split used for held-out evaluation. None: the data set's held-out split if "
                                      "it has one ('test', 'validation' or 'eval'; a single local file has none), "
                                      "else no evaluation. A split named here must exist.")
    eval_dataset_name: str | None = _f(None, "A separate evaluation set (hub name, local file or directory; its "
                                             "eval_split split, a single file whole).")
    prompt_field: str = _f("prompt", "Dataset column holding the prompt (text or chat messages).")
    chat_template_kwargs: dict | None = _f(None, "Extra keyword arguments of the tokenizer's apply_chat_template "
                                                 "(TRL's name), e.g. {enable_thinking: false} for Qwen3.")
    guidance_field: str = _f("solution", "Dataset column holding the reference solution (the guidance source).")
    embedded_train_size: int = _f(2000, "Embedded task: number of training problems.")
    embedded_eval_size: int = _f(64, "Embedded task: number of held-out problems.")
    embedded_difficulties: list = _f([3], "Embedded task: digit counts of the training problems.")
    num_eval_prompts: int | None = _f(None, "Evaluate on at most this many eval prompts (None: all).")
    curriculum: bool = _f(False, "Keep dataset order (no shuffling), e.g. for an easy-to-hard curriculum (TRL: "
                                 "shuffle_dataset false).")

    # ---- generation (TRL names)
    num_generations: int = _f(8, "Completions per prompt (the group size G).")
    max_prompt_length: int | None = _f(None, "Prompts are left-truncated to this many tokens (None: no limit, as "
                                             "TRL 1.x, which has no such field).")
    max_completion_length: int = _f(512, "Maximum number of generated tokens per completion (guidance excluded).")
    temperature: float = _f(1.0, "Sampling temperature of roll-outs (also divides the logits in the loss).")
    top_p: float = _f(1.0, "Nucleus sampling threshold.")
    top_k: int = _f(0, "Top-k sampling (0: off).")
    min_p: float | None = _f(None, "Minimum token probability relative to the most likely token (None: off).")
    repetition_penalty: float = _f(1.0, "Penalty of tokens already in the prompt or the completion (1: off; > 1 "
                                        "discourages repeats), as transformers' RepetitionPenaltyLogitsProcessor.")
    steps_per_generation: int | None = _f(None, "Micro-batches per generation (TRL's name); only "
                                                "gradient_accumulation_steps (the default) is supported: one "
                                                "generation per optimizer step (num_iterations reuses it).")
    generation_batch_size: int | None = _f(None, "Completions per generation over all ranks (TRL's name); only "
                                                 "per_device_train_batch_size x world size x steps_per_generation.")

    # ---- loss (TRL names)
    beta: float = _f(0.0, "KL coefficient to the reference policy (0: no reference model).")
    epsilon: float = _f(0.2, "Lower clipping range ε_low of the ratio.")
    epsilon_high: float | None = _f(None, "Upper clipping range ε_high (None: same as epsilon).")
    delta: float | None = _f(None, "Upper cap on the ratio of the unclipped term (two-sided clipping).")
    loss_type: str = _f("dapo", "Aggregation: grpo | bnpo | dapo | dr_grpo.")
    scale_rewards: str = _f("group", "Advantage scaling: group | batch | none (batch: the std of the rewards of "
                                     "one generated micro-batch on one rank).")
    importance_sampling_level: str = _f("token", "token (GRPO) or sequence (GSPO).")
    num_iterations: int = _f(1, "Optimizer steps per generated batch (μ); >1 computes old log-probs.")
    mask_truncated_completions: bool = _f(False, "Give truncated completions (no EOS) zero weight in the loss.")
    dynamic_sampling: bool = _f(False, "DAPO's dynamic sampling: drop groups whose rewards are all equal (no "
                                       "signal) and draw more prompts until each micro-batch is filled with groups "
                                       "that carry signal, or dynamic_sampling_max_rounds generation rounds ran.")
    dynamic_sampling_max_rounds: int = _f(4, "dynamic_sampling: at most this many generation rounds (of "
                                             "per_device_train_batch_size completions) per micro-batch; when they "
                                             "do not fill it, the micro-batch trains on the groups with signal found.")
    use_bias_correction_kl: bool = _f(False, "Multiply the KL term by the importance ratio (TRL's default true); "
                                             "supported only with beta 0 (docs/TRL_COMPAT.md).")
    disable_dropout: bool = _f(False, "Set every dropout probability of the policy (and reference) to 0.")
    cast_lm_head_to_fp32: bool = _f(False, "Compute the lm_head and the log-probs from float32 operands whatever "
                                           "the compute dtype (training loss, old/reference log-probs, roll-outs).")

    # ---- optimisation (TRL names)
    learning_rate: float = _f(1e-6, "AdamW peak learning rate.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    adam_beta1: float = _f(0.9, "AdamW β1.")
    adam_beta2: float = _f(0.999, "AdamW β2.")
    adam_epsilon: float = _f(1e-8, "AdamW ε.")
    optim: str = _f("adamw_torch_fused", "adamw_torch_fused (torch's fused AdamW where the parameters allow it) | "
                                         "adamw_torch (the same update, per-tensor).")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0: off).")
    skip_zero_signal_steps: bool = _f(True, "With beta = 0, skip the optimizer step (no AdamW moment update, no "
                                            "weight decay) when no trained token of the step has a non-zero "
                                            "advantage; the step still counts for the schedule (`steps_skipped`). "
                                            "With beta > 0 the KL term has a gradient: never skipped.")
    lr_scheduler_type: str = _f("linear", "transformers.get_scheduler name; reduce_lr_on_plateau and greedy step on "
                                          "the held-out accuracy (they need eval_strategy).")
    lr_scheduler_kwargs: dict | None = _f(None, "Extra arguments of the scheduler (e.g. {min_lr_rate: 0.1} for "
                                                "cosine_with_min_lr, {num_decay_steps: 100} for warmup_stable_decay).")
    warmup_steps: float = _f(0, "Warm-up optimizer steps; a value in (0, 1) is a fraction of the run's steps.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    per_device_train_batch_size: int = _f(8, "Completions per micro-batch per device (multiple of num_generations).")
    num_train_epochs: float = _f(3.0, "Passes over the training prompts when max_steps is -1.")
    max_steps: int = _f(-1, "Number of optimizer steps (-1: num_train_epochs over the training prompts).")
    seed: int = _f(42, "Seed of data order, sampling and initialisation.")
    gradient_checkpointing: str = _f("auto", "Recompute each decoder layer's activations in the backward pass: auto "
                                             "(on for CUDA, as TRL's default; off on the CPU) | true | false.")
    gradient_checkpointing_kwargs: dict | None = _f(None, "Arguments of the model's gradient checkpointing (default: "
                                                          "{use_reentrant: false}).")
    max_tokens_per_microbatch: int | str = _f("auto", "Cut each micro-batch's packed row (at group boundaries) into "
                                                      "forward/backward pieces of at most this many tokens, the "
                                                      "loss unchanged: auto (CUDA: the memory planner's largest "
                                                      "piece that fits, `g2rpo-fast plan`; CPU: 0) | 0 (no cut) | "
                                                      "a token count.")
    bf16: bool | None = _f(None, "TRL's switch: true means torch_dtype bfloat16, false float32; None leaves "
                                 "torch_dtype (auto: bfloat16 on CUDA).")
    device: str = _f("auto", "auto | cpu | cuda.")
    torch_dtype: str = _f("auto", "Compute dtype of the training forward, roll-outs and loss matmuls: auto "
                                  "(bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | float16 (CUDA only). "
                                  "Weights and AdamW state stay float32.")
    attn_implementation: str = _f("auto", "Attention of the packed training forward and the roll-outs: auto (by "
                                          "device and torch_dtype) | flash_attention_2 | torch_varlen | sdpa.")
    cuda_graphs: str = _f("auto", "Roll-out decode steps replayed from CUDA graphs (one per batch-size bucket, "
                                  "captured per roll-out call): auto (on for CUDA with the flash_attn, torch_varlen "
                                  "or sdpa backend; off on the CPU) | true | false. Only a GPU can check them.")
    use_liger_kernel: bool = _f(False, "Liger-Kernel RMSNorm, RoPE and SwiGLU in the policy (needs CUDA, or "
                                       "TRITON_INTERPRET=1 on the CPU).")
    packed_row_tokens: int = _f(-1, "Cut the packed training row into forwards of at most this many tokens "
                                    "(at sequence boundaries); 0: one row; -1: auto (one row on CUDA, 512 on CPU, "
                                    "where attention over a packed row is quadratic).")
    prefix_shared_forward: str = _f("auto", "Training and old/ref log-prob forwards compute each group's prompt once "
                                            "(its completions attend to it) instead of num_generations times: auto "
                                            "(on for Llama/Qwen2/Qwen3 without sliding-window layers, else off with "
                                            "one notice) | true (refused where unsupported) | false.")

    # ---- several processes (torchrun): DDP, or FSDP2 with `fsdp` (distributed/parallel.py)
    fsdp: bool = _f(False, "With more than one process: shard parameters, gradients and AdamW state over the ranks "
                           "(FSDP2 fully_shard on each decoder layer and the root; checkpoints through "
                           "torch.distributed.checkpoint). false: DDP (every rank holds the whole model).")
    fsdp_cpu_offload: bool = _f(False, "With fsdp: keep the sharded parameters, gradients and AdamW state in CPU "
                                       "memory (FSDP2 CPUOffloadPolicy; the optimizer step runs on the CPU).")
    dist_timeout_s: float = _f(600.0, "Seconds a collective may wait for the other ranks before the process group "
                                      "gives up (a rank that fails then brings the others down, never a hang).")

    # ---- rewards
    reward_funcs: list = _f(["accuracy"], "Reward function names (built-in or 'module:function').")
    reward_weights: list | None = _f(None, "Weight of each reward function (None: all 1).")
    code_sandbox: str = _f("auto", "Isolation of the completions that code rewards run: auto (bubblewrap, else user "
                                   "namespaces; refuses to start when neither works) | bwrap | namespace | "
                                   "unsafe-process (no isolation: an explicit opt-in).")
    reward_timeout: float | None = _f(300.0, "Seconds one reward-function call (one micro-batch) may take; a call "
                                             "that overruns scores 0 for its samples, with one warning and "
                                             "`reward_errors` in the metrics. 300: a hung reward is reported within "
                                             "5 minutes, while a slow legitimate one is not cut (the built-in code "
                                             "reward's worst case, every sample at its 5 s sandbox limit, is 80 s "
                                             "for 64 completions on 2 cores). Enforced in a watchdog thread (the "
                                             "call is abandoned, Python cannot stop it) or, with reward_isolation: "
                                             "process, by killing the worker; the built-in rewards bound their own "
                                             "time per sample and run directly. None: no limit.")
    reward_isolation: str = _f("none", "none: reward functions run in the trainer's process (no copying, any "
                                       "callable, closures too) | process: in a worker process (spawn) that can "
                                       "die (os._exit, a crash) or be killed on reward_timeout without taking the "
                                       "trainer with it; the functions must be importable names or picklable.")

    # ---- guidance (G²RPO-A)
    guidance_ratio: float = _f(0.25, "Fraction of each group that is guided: n_guided = round(ratio * G).")
    guidance_schedule: str = _f("adaptive", "adaptive (G²RPO-A, the paper's rule) | adaptive_sparse (the rule for "
                                            "sparse rewards: a zero-reward step raises ℓ, the factor is clamped to "
                                            "[1/c, c], ℓ rounded to nearest) | fixed | linear | none (vanilla GRPO).")
    guidance_initial_length: int = _f(18, "Initial guidance length ℓ in tokens.")
    guidance_max_length: int = _f(36, "Upper bound of ℓ (adaptive).")
    guidance_min_length: int = _f(1, "Lower bound of ℓ (adaptive).")
    guidance_final_length: int = _f(0, "Final ℓ of the linear schedule (reached at max_steps).")
    guidance_window: int = _f(2, "Adaptive: number of previous step rewards averaged into p.")
    guidance_update_every: int = _f(1, "Adaptive: apply the rule every this many optimizer steps.")
    guidance_max_factor: float = _f(2.0, "adaptive_sparse: the clamp c of the factor ℓ is multiplied by, "
                                         "in [1/c, c] (c > 1).")
    guidance_loss: str = _f("mask", "mask: guidance tokens are context only | include: trained on (authors' code).")
    guidance_reward: str | None = _f(None, "Reward function whose step mean drives the adaptive controller and "
                                           "the held-out accuracy (None: the first of reward_funcs).")

    # ---- output
    output_dir: str = _f("trainer_output", "Where metrics.jsonl, checkpoints and plots go (TRL's None: "
                                           "trainer_output).")
    overwrite_output_dir: bool = _f(False, "Let a fresh run replace an earlier run's metrics.jsonl and checkpoints "
                                           "in output_dir (without it, a used output_dir is refused unless resuming).")
    logging_steps: int = _f(10, "Print (and report) the metrics every this many steps (metrics.jsonl gets every "
                                "step).")
    logging_first_step: bool = _f(False, "Also print the first step's metrics.")
    save_strategy: str = _f("steps", "steps (every save_steps) | epoch | no (no checkpoint before the last step: "
                                     "the final checkpoint is always written).")
    save_steps: int = _f(500, "Save a checkpoint every this many steps (0: only at the end).")
    save_total_limit: int | None = _f(None, "Keep at most this many checkpoints (None: all).")
    eval_strategy: str = _f("no", "no (only eval_at_end) | steps (every eval_steps) | epoch: held-out accuracy "
                                  "during training.")
    eval_steps: int | None = _f(None, "With eval_strategy steps: evaluate every this many steps (None: "
                                      "logging_steps).")
    eval_on_start: bool = _f(False, "Evaluate before the first step.")
    eval_at_end: bool = _f(True, "Evaluate held-out accuracy after the last step (when there are held-out rows).")
    eval_num_samples: int = _f(4, "Final evaluation also reports the mean accuracy of this many sampled "
                                  "completions per prompt at the training temperature (0: greedy only).")
    plots: bool = _f(True, "Write PNG plots of the metrics at the end.")
    report_to: str | list = _f("none", "Also log the metrics to: none | tensorboard (scalars under output_dir/runs/) | "
                                       "wandb (WANDB_MODE=offline works without a network) | all, or a list; rank "
                                       "0, every logging_steps.")
    run_name: str | None = _f(None, "The run's name in TensorBoard (its folder under runs/) and wandb.")
    progress_bar: bool | None = _f(None, "Show a tqdm progress bar (None: only when stdout is a terminal; TRL: "
                                         "disable_tqdm).")
    log_completions: bool = _f(False, "Every logging_steps, write the step's prompts, completions, rewards, guided "
                                      "flags and guidance length to completions.jsonl (and wandb) and print some.")
    num_completions_to_print: int | None = _f(None, "Completions printed with log_completions (None: all).")
    resume_from_checkpoint: str | None = _f(None, "For scripts, as in transformers (the trainer does not read it): "
                                                  "pass it to train(resume_from_checkpoint=...).")

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Every field's type and range, then the cross-field rules; `ValueError` naming the field."""
        for name in ("prefix_shared_forward", "gradient_checkpointing", "cuda_graphs"):
            if isinstance(getattr(self, name), bool):  # YAML's `true` / `false`, TRL's bool
                setattr(self, name, str(getattr(self, name)).lower())
        if self.output_dir is None:  # TRL's default, meaning trainer_output
            self.output_dir = "trainer_output"
        if isinstance(self.scale_rewards, bool):  # TRL takes true / false for group / none
            self.scale_rewards = "group" if self.scale_rewards else "none"
        if self.fsdp is None or isinstance(self.fsdp, (str, list, tuple)):  # TRL's option strings
            self.fsdp, offload = fsdp_options(self.fsdp)
            self.fsdp_cpu_offload = self.fsdp_cpu_offload or offload
        for f in dataclasses.fields(self):
            _check_field(self, f)
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"`{name}` must be one of {list(choices)}, got {getattr(self, name)!r}")
        self._check_trl_settings()
        if self.per_device_train_batch_size % self.num_generations != 0:
            raise ValueError(f"`per_device_train_batch_size` ({self.per_device_train_batch_size}) must be divisible "
                             f"by `num_generations` ({self.num_generations}): it counts completions")
        if self.guidance_min_length > self.guidance_max_length:
            raise ValueError(f"`guidance_min_length` ({self.guidance_min_length}) must be <= `guidance_max_length` "
                             f"({self.guidance_max_length})")
        if self.guidance_schedule in ("adaptive", "adaptive_sparse") and not (
                self.guidance_min_length <= self.guidance_initial_length <= self.guidance_max_length):
            raise ValueError(f"`guidance_initial_length` ({self.guidance_initial_length}) must lie in "
                             f"[guidance_min_length, guidance_max_length] = "
                             f"[{self.guidance_min_length}, {self.guidance_max_length}]")
        if isinstance(self.reward_funcs, str):
            self.reward_funcs = [self.reward_funcs]
        if not self.reward_funcs:
            raise ValueError("`reward_funcs` must name at least one reward function")
        from g2rpo_fast.rewards import get_reward_func

        guides = [] if self.guidance_reward is None else [self.guidance_reward]
        for name in list(self.reward_funcs) + guides:
            if isinstance(name, str) or callable(name):
                try:
                    get_reward_func(name)
                except ValueError as exc:
                    field_name = "guidance_reward" if name == self.guidance_reward and name not in self.reward_funcs \
                        else "reward_funcs"
                    raise ValueError(f"`{field_name}`: {exc}") from None
            else:
                raise ValueError(f"`reward_funcs`: expected names or callables, got {name!r}")
        if self.reward_weights is not None:
            if len(self.reward_weights) != len(self.reward_funcs):
                raise ValueError(f"`reward_weights` has {len(self.reward_weights)} entries for "
                                 f"{len(self.reward_funcs)} reward_funcs")
            self.reward_weights = [_finite_weight(i, w) for i, w in enumerate(self.reward_weights)]
        if self.fsdp_cpu_offload and not self.fsdp:
            raise ValueError("`fsdp_cpu_offload` needs `fsdp: true` (it offloads the FSDP shards)")
        self._check_embedded_splits()
        if not self.embedded_difficulties:
            raise ValueError("`embedded_difficulties` must be a non-empty list of digit counts")
        for d in self.embedded_difficulties:
            if not isinstance(d, int) or isinstance(d, bool) or not 1 <= d <= 5:
                raise ValueError(f"`embedded_difficulties`: {d!r} is not a digit count in [1, 5]")

    def _check_trl_settings(self) -> None:
        """The rules of the fields that came with TRL's names (run length, schedules, precision,
        logging targets); `ValueError` naming the field."""
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"`max_steps` must be -1 (num_train_epochs decides) or an int >= 1, got {self.max_steps}")
        if self.warmup_steps >= 1 and self.warmup_steps != int(self.warmup_steps):
            raise ValueError(f"`warmup_steps` must be a whole number of steps, or a fraction in (0, 1) of the run, "
                             f"got {self.warmup_steps}")
        self.warmup_steps = int(self.warmup_steps) if self.warmup_steps >= 1 or self.warmup_steps == 0 \
            else self.warmup_steps
        if self.eval_steps is not None and self.eval_strategy != "steps":
            raise ValueError(f"`eval_steps` ({self.eval_steps}) is set but `eval_strategy` is {self.eval_strategy!r}: "
                             f"set eval_strategy: steps (as TRL, eval_steps is read only then)")
        if self.lr_scheduler_type in METRIC_SCHEDULERS and self.eval_strategy == "no":
            raise ValueError(f"`lr_scheduler_type` {self.lr_scheduler_type} steps on the held-out accuracy, so it "
                             f"needs eval_strategy steps or epoch (and held-out rows)")
        if self.use_bias_correction_kl and self.beta > 0:
            raise ValueError("`use_bias_correction_kl`: the KL times the importance ratio is not implemented in the "
                             "fused loss (DESIGN.md's KL is the plain k3 estimator): set it false, or beta 0")
        if self.bf16 is not None:
            wanted = "bfloat16" if self.bf16 else "float32"
            if self.torch_dtype not in ("auto", wanted):
                raise ValueError(f"`bf16` ({self.bf16}) and `torch_dtype` ({self.torch_dtype}) disagree: give one")
            self.torch_dtype = wanted
        if self.min_p is not None and not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"`min_p` must be in [0, 1] or None, got {self.min_p!r}")
        if self.steps_per_generation not in (None, self.gradient_accumulation_steps):
            raise ValueError(f"`steps_per_generation` ({self.steps_per_generation}) other than "
                             f"gradient_accumulation_steps ({self.gradient_accumulation_steps}) is not supported: "
                             f"each optimizer step generates its own roll-outs (num_iterations reuses them)")
        for target in self.report_targets:
            if target == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
                raise ValueError("`report_to`: tensorboard is not installed (pip install tensorboard, or "
                                 "g2rpo_fast[tensorboard])")
            if target == "wandb" and importlib.util.find_spec("wandb") is None:
                raise ValueError("`report_to`: wandb is not installed (pip install wandb, or g2rpo_fast[wandb]; "
                                 "WANDB_MODE=offline logs without a network)")

    @property
    def report_targets(self) -> list[str]:
        """`report_to` as a list of integrations: [] for none, every installed one for all."""
        names = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to)
        if "all" in names:
            return [t for t in REPORT_TARGETS if importlib.util.find_spec(t) is not None]
        return [n for n in dict.fromkeys(names) if n != "none"]

    @property
    def evaluates(self) -> bool:
        """Whether the run evaluates at all (then held-out rows are looked for)."""
        return bool(self.eval_at_end or self.eval_strategy != "no" or self.eval_on_start)

    def _check_embedded_splits(self) -> None:
        """The built-in task has two splits, `train` and `eval`: another name would be ignored."""
        from g2rpo_fast.data.loading import is_embedded

        if self.dataset_name is None or not is_embedded(self.dataset_name):
            return  # None: the built-in task only with the built-in model (the trainer decides)
        for name, allowed in (("dataset_split", ("train",)), ("eval_split", ("eval", None))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}`: the built-in task's splits are 'train' (training) and 'eval' "
                                 f"(held out); got {getattr(self, name)!r}")

    def warmup_notice(self) -> str | None:
        """Legal but likely a mistake (the trainer warns with it): a warm-up as long as the run."""
        if 0 < self.max_steps <= self.warmup_steps:
            return (f"`warmup_steps` ({self.warmup_steps}) >= `max_steps` ({self.max_steps}): the learning rate never "
                    f"reaches learning_rate ({self.learning_rate:g}) in this run")
        return None

    # ------------------------------------------------------------------ helpers
    @property
    def prompts_per_micro_batch(self) -> int:
        return self.per_device_train_batch_size // self.num_generations

    @property
    def n_guided(self) -> int:
        """Guided samples per group: round(guidance_ratio · G) (Python's round: halves to even);
        0 without a guidance schedule."""
        if self.guidance_schedule == "none":
            return 0
        return round(self.guidance_ratio * self.num_generations)

    def loss_options(self):
        """The `LossOptions` of this run's loss (TRL's config names -> the loss's)."""
        from g2rpo_fast.loss import LossOptions

        guided = self.guidance_schedule != "none"
        return LossOptions(
            beta=self.beta, epsilon_low=self.epsilon,
            epsilon_high=self.epsilon if self.epsilon_high is None else self.epsilon_high,
            delta=self.delta, loss_type=self.loss_type, importance_sampling_level=self.importance_sampling_level,
            # dr_grpo's normaliser: the longest possible completion, guidance tokens included
            max_completion_length=self.max_completion_length
            + (max(self.guidance_max_length, self.guidance_initial_length) if guided else 0),
            temperature=self.temperature, guidance_loss=self.guidance_loss, scale_rewards=self.scale_rewards)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "reward_funcs":
                v = [_callable_name(x) for x in v]
            elif f.name == "guidance_reward" and v is not None:  # validate() accepts a callable here too
                v = _callable_name(v)
            out[f.name] = v
        return out

    def save_json(self, path) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=2)

    @classmethod
    def default_of(cls, name: str):
        """A field's default value (a fresh copy for lists and dicts)."""
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict) -> G2RPOConfig:
        """Fields, or TRL's names for them (unknown names: a `ValueError` naming them)."""
        return cls(**values)

    @classmethod
    def from_yaml(cls, path=None, **overrides) -> G2RPOConfig:
        """Fields from a YAML mapping (None: the packaged default.yaml), then `overrides`.
        A missing or unreadable file or a YAML syntax error is a `ValueError` naming the file."""
        values = read_yaml_mapping(resolve_config_path(path))
        values.update(overrides)
        return cls.from_dict(values)


class DuplicateKeyError(ValueError):
    def __init__(self, key, first: int, second: int):
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


def _unique_key_loader():
    """yaml's SafeLoader, except that a mapping naming a key twice is an error (YAML says keys
    are unique; PyYAML would silently keep the last value)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                if isinstance(key, str) and key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def read_yaml_mapping(path) -> dict:
    """The `field: value` mapping of a YAML config file; float fields written like `1e-4`
    (a string to YAML 1.1) are read as numbers."""
    import yaml

    if os.path.isdir(path):
        raise ValueError(f"`--config`: {path} is a directory, not a YAML file")
    try:
        with open(path, encoding="utf-8") as fh:
            values = yaml.load(fh, Loader=_unique_key_loader())  # a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise ValueError(f"`{exc.key}`: {path} sets it twice (lines {exc.first} and {exc.second}); keep one") from None
    except FileNotFoundError:
        raise ValueError(f"`--config`: no such file: {path}") from None
    except OSError as exc:
        raise ValueError(f"`--config`: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"`--config`: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"`--config`: {path} is not valid YAML{at}: {problem}") from None
    values = values or {}
    if not isinstance(values, dict):
        raise ValueError(f"`--config`: {path} must hold a mapping of field: value, got {type(values).__name__}")
    kinds = {f.name: field_kind(f)[0] for f in dataclasses.fields(G2RPOConfig)}
    for key, value in values.items():
        if kinds.get(key) == "float" and isinstance(value, str):
            try:
                values[key] = float(value)
            except ValueError:
                pass  # refused by validate() with the field's name
    return values


# Smallest value of every int field (None is allowed only where the annotation says so).
# (warmup_steps is a float field: a fraction in (0, 1), or whole steps)
INT_MIN = {
    "embedded_train_size": 1, "embedded_eval_size": 1, "num_eval_prompts": 1, "num_generations": 2,
    "max_prompt_length": 1, "max_completion_length": 1, "top_k": 0, "num_iterations": 1,
    "gradient_accumulation_steps": 1, "per_device_train_batch_size": 1, "seed": 0,
    "dynamic_sampling_max_rounds": 1,
    "packed_row_tokens": -1, "max_tokens_per_microbatch": 0, "guidance_initial_length": 0, "guidance_max_length": 0,
    "guidance_min_length": 0,
    "guidance_final_length": 0, "guidance_window": 1, "guidance_update_every": 1, "logging_steps": 1,
    "save_steps": 0, "save_total_limit": 1, "eval_steps": 1, "eval_num_samples": 0, "max_steps": -1,
    "steps_per_generation": 1, "generation_batch_size": 1, "num_completions_to_print": 0,
}
# int fields that also take "auto"
AUTO_INT_FIELDS = ("max_tokens_per_microbatch",)
SEED_MAX = 2**63 - 1  # torch.manual_seed and numpy seed sequences take it
# Range of every float field: (low, high, low included, high included); all must be finite.
INF = float("inf")
FLOAT_RANGES = {
    "temperature": (0.0, INF, False, False), "top_p": (0.0, 1.0, False, True), "beta": (0.0, INF, True, False),
    # epsilon < 1: the ratio's clip floor 1 - epsilon must stay positive
    "epsilon": (0.0, 1.0, True, False), "epsilon_high": (0.0, INF, True, False), "delta": (1.0, INF, False, False),
    "learning_rate": (0.0, INF, True, False), "weight_decay": (0.0, INF, True, False),
    "adam_beta1": (0.0, 1.0, True, False), "adam_beta2": (0.0, 1.0, True, False),
    "max_grad_norm": (0.0, INF, True, False), "guidance_ratio": (0.0, 1.0, True, True),
    "reward_timeout": (0.0, INF, False, False), "dist_timeout_s": (0.0, INF, False, False),
    "guidance_max_factor": (1.0, INF, False, False),
    "adam_epsilon": (0.0, INF, False, False), "num_train_epochs": (0.0, INF, False, False),
    "warmup_steps": (0.0, INF, True, False), "min_p": (0.0, 1.0, True, True),
    "repetition_penalty": (0.0, INF, False, False),
}
# String fields that must not be empty (the others are choices, checked against CHOICES).
NON_EMPTY_STR = ("model_name_or_path", "dataset_name", "dataset_split", "prompt_field", "guidance_field",
                 "output_dir", "guidance_reward")


def field_kind(f) -> tuple[str, bool]:
    """("int" | "float" | "str" | "bool" | "list", None allowed) from a field's annotation."""
    ann = str(f.type)
    return ann.split("|")[0].strip(), "None" in ann


def _check_field(cfg, f) -> None:
    name, value = f.name, getattr(cfg, f.name)
    kind, optional = field_kind(f)
    if name in AUTO_INT_FIELDS and value == "auto":
        return
    if value is None:
        if optional:
            return
        raise ValueError(f"`{name}` must not be None")
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"`{name}` must be true or false, got {value!r}")
    elif kind == "int":
        low = INT_MIN[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            auto = " or 'auto'" if name in AUTO_INT_FIELDS else ""
            raise ValueError(f"`{name}` must be an int >= {low}{auto}, got {value!r}")
        if name == "seed" and value > SEED_MAX:
            raise ValueError(f"`seed` must be <= 2**63 - 1, got {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"`{name}` must be a number, got {value!r}")
        low, high, low_in, high_in = FLOAT_RANGES[name]
        ok = math.isfinite(value) and (value >= low if low_in else value > low) and \
            (value <= high if high_in else value < high)
        if not ok:
            span = f"{'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
            raise ValueError(f"`{name}` must be a finite number in {span}, got {value!r}")
    elif kind == "str" and name != "report_to":
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
            setattr(cfg, name, value)
        if name == "guidance_reward" and callable(value):
            return
        if not isinstance(value, str):
            raise ValueError(f"`{name}` must be a string, got {value!r} ({type(value).__name__})")
        if name in NON_EMPTY_STR and not value.strip():
            raise ValueError(f"`{name}` must not be empty")
    elif kind == "list":
        if name == "reward_funcs" and (isinstance(value, str) or callable(value)):
            return
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"`{name}` must be a list, got {value!r}")
    elif kind == "dict":
        if not isinstance(value, dict):
            raise ValueError(f"`{name}` must be a mapping, got {value!r}")
    if name == "report_to":
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"`report_to` must be a name or a list of names, got {value!r}")
        bad = [n for n in names if n not in (*REPORT_TARGETS, "none", "all")]
        if bad:
            raise ValueError(f"`report_to`: {bad[0]!r} is not supported: none | all | {' | '.join(REPORT_TARGETS)}, "
                             f"or a list of them")


def _finite_weight(index: int, value) -> float:
    try:
        w = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        w = None
    if w is None or not math.isfinite(w):
        raise ValueError(f"`reward_weights`[{index}] must be a finite number, got {value!r}")
    return w


def _callable_name(x):
    from g2rpo_fast.rewards.registry import func_name

    return x if isinstance(x, str) else func_name(x)


def default_config_path() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "default.yaml")


# Packaged presets (`--config NAME`): g2rpo_fast/configs/NAME.yaml.
PRESETS = ("default", "hard")


def resolve_config_path(path) -> str:
    """None -> the packaged default.yaml; a preset name that is not an existing file (a
    directory of that name, such as a demo's output, does not count) -> its packaged YAML;
    anything else unchanged."""
    if path is None:
        return default_config_path()
    if str(path) in PRESETS and not os.path.isfile(path):
        return os.path.join(os.path.dirname(default_config_path()), f"{path}.yaml")
    return path


def parse_value(text: str, annotation: Any, name: str = "value"):
    """Convert a command-line string to a field's type (YAML syntax for lists/None/bools);
    malformed YAML is a `ValueError` naming the field."""
    import yaml

    ann = str(annotation)
    if "None" in ann and text.strip() in ("None", "none", "null", "~"):
        return None
    if ann.startswith("str") and not ("list" in ann and text.strip().startswith("[")):
        return text
    if ann.startswith("float"):
        try:
            return float(text)  # YAML reads "1e-4" as a string
        except ValueError:
            pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"`{name}`: {text!r} is not valid YAML ({problem})") from None
    if value is None:
        return None
    if ann.startswith("list") and not isinstance(value, list):
        return [value]
    return value


def fsdp_options(value) -> tuple[bool, bool]:
    """TRL's `fsdp` option string or list ("full_shard auto_wrap", "full_shard offload", "" / None)
    -> (fsdp, fsdp_cpu_offload). FSDP2 shards fully; other strategies are refused by name."""
    words = value.split() if isinstance(value, str) else list(value or ())
    unknown = [w for w in words if w not in ("full_shard", "auto_wrap", "offload")]
    if unknown:
        raise ValueError(f"`fsdp`: {unknown[0]!r} is not supported: FSDP2 shards parameters, gradients and optimizer "
                         f"state (full_shard; each decoder layer wrapped: auto_wrap), optionally offloaded (offload)")
    if words and "full_shard" not in words:
        raise ValueError(f"`fsdp`: {value!r} needs full_shard (the only sharding strategy)")
    return bool(words), "offload" in words
