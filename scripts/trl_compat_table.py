"""Write docs/TRL_COMPAT.md: every field of the installed `trl.GRPOConfig`, and what `G2RPOConfig`
does with it (g2rpo_fast/trainer/trl_names.py is the source; tests/test_trl_compat.py checks that
the file lists every field with the status the code gives it).

    .venv/bin/python scripts/trl_compat_table.py          # rewrite docs/TRL_COMPAT.md
"""
from __future__ import annotations

import dataclasses
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs", "TRL_COMPAT.md")

# What a same-named field does here beyond "TRL's meaning", where a reader needs to know.
NOTES = {
    "output_dir": "TRL's None means `trainer_output`, our default",
    "max_steps": "-1: `num_train_epochs` passes over the training prompts",
    "num_train_epochs": "one epoch draws every training prompt once; a generation serves `num_iterations` steps",
    "lr_scheduler_type": "every `transformers.get_scheduler` name; `reduce_lr_on_plateau` and `greedy` step on the "
                         "held-out accuracy at each evaluation (mode max), so they need `eval_strategy`",
    "warmup_steps": "a value in (0, 1) is a fraction of the run's steps",
    "optim": "`adamw_torch_fused` (torch's fused AdamW; per-tensor under FSDP) or `adamw_torch`; others refused",
    "bf16": "true: `torch_dtype` bfloat16; false: float32; None: `torch_dtype` decides (auto: bfloat16 on CUDA)",
    "logging_steps": "whole steps (a fraction is refused); metrics.jsonl gets every step, the printed line and "
                     "`report_to` the mean since the last log (the running counts num_tokens, epoch and "
                     "steps_skipped as they stand, as TRL logs them)",
    "report_to": "`none`, `tensorboard`, `wandb`, `all`, or a list; others refused by name",
    "eval_strategy": "`no` still evaluates once after the last step when there are held-out rows (`eval_at_end`)",
    "eval_steps": "only with `eval_strategy: steps` (set otherwise: refused); None: `logging_steps`",
    "save_strategy": "`no`: no checkpoint before the end; the final checkpoint (the trained model) is always "
                     "written. `best` is refused (no best-model tracking)",
    "save_steps": "whole steps (0: only the final checkpoint)",
    "fsdp": "FSDP2 `full_shard` (+ `auto_wrap`, `offload`) or true/false; other strategies refused by name",
    "resume_from_checkpoint": "as in transformers, for scripts: pass it to `train(resume_from_checkpoint=...)`",
    "model_init_kwargs": "passed to `from_pretrained` when `model` is a path or hub name; the master weights are "
                         "float32 whatever dtype they load in",
    "steps_per_generation": "only `gradient_accumulation_steps` (the default): one generation per optimizer step, "
                            "`num_iterations` reuses it; other values refused",
    "generation_batch_size": "only per_device_train_batch_size x world size x gradient_accumulation_steps",
    "loss_type": "`grpo`, `bnpo`, `dapo`, `dr_grpo`; TRL's other types refused by name",
    "scale_rewards": "`group`, `batch`, `none`, or true/false (= group/none)",
    "log_completions": "every `logging_steps`: `completions.jsonl` (prompt, completion, each reward, guided, ℓ), "
                       "a wandb table with `report_to: wandb`, printed rows",
    "cast_lm_head_to_fp32": "the training loss, old/reference log-probs and the packed engine's logits",
    "repetition_penalty": "as transformers' RepetitionPenaltyLogitsProcessor, over prompt and completion tokens",
    "use_liger_kernel": "RMSNorm, RoPE and SwiGLU; the loss is this package's fused loss",
}


def trl_defaults() -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import trl
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(trl.GRPOConfig)}


def status(name: str) -> tuple[str, str]:
    """(status, note) of a TRL field: same | different default | alias | not supported."""
    from g2rpo_fast.trainer.config import G2RPOConfig
    from g2rpo_fast.trainer.trl_names import ALIASES, ANY, DIFFERENT_DEFAULTS, UNSUPPORTED

    if name in G2RPOConfig.field_names():
        if name in DIFFERENT_DEFAULTS:
            return "different default", f"ours: `{G2RPOConfig.default_of(name)!r}`; {DIFFERENT_DEFAULTS[name]}"
        return "same", NOTES.get(name, "")
    if name in ALIASES:
        target = ALIASES[name][0]
        return "alias", f"sets `{target}` (ours; default `{G2RPOConfig.default_of(target)!r}`)"
    accepted, reason = UNSUPPORTED[name]
    if ANY in accepted:
        return "not supported", f"any value accepted, no effect: {reason}"
    values = " or ".join(f"`{v!r}`" for v in accepted)
    return "not supported", f"only {values} accepted: {reason}"


def table() -> str:
    import trl

    lines = [
        "# TRL's GRPOConfig in G2RPOConfig",
        "",
        f"Every field of `trl.GRPOConfig` (trl {trl.__version__}, with transformers' `TrainingArguments`) and what "
        "`g2rpo_fast.G2RPOConfig` does with it. A TRL GRPO script's `GRPOConfig(...)` becomes `G2RPOConfig(...)` "
        "with the same keywords:",
        "",
        "- **same**: a field of ours, TRL's name, meaning and default;",
        "- **different default**: TRL's name and meaning, another default (the reason is given);",
        "- **alias**: TRL's name for what one of our fields does; setting it sets that field (a contradiction "
        "with the field is a `ValueError` naming both);",
        "- **not supported**: accepted only at the values listed (they mean what this trainer does anyway), "
        "refused otherwise with a `ValueError` that names the field and gives the reason. Read back "
        "(`args.hub_model_id`, as a TRL callback may), it gives the value set, else TRL's default.",
        "",
        "Any other name is refused by name (`ValueError`, with the closest names). On the command line every name "
        "is an option, with dashes or underscores (`--learning-rate`, `--learning_rate`). Generated by "
        "`scripts/trl_compat_table.py` from `g2rpo_fast/trainer/trl_names.py`; `tests/test_trl_compat.py` fails "
        "when a field of the installed trl is missing here or listed with another status.",
        "",
        "| field | TRL default | status | here |",
        "| --- | --- | --- | --- |",
    ]
    for name, default in trl_defaults().items():
        state, note = status(name)
        lines.append(f"| `{name}` | `{default!r}` | {state} | {note} |")
    from g2rpo_fast.trainer.config import G2RPOConfig

    ours = [n for n in G2RPOConfig.field_names() if n not in trl_defaults()]
    lines += ["", "Fields of ours that TRL does not have (see README, Configuration): "
              + ", ".join(f"`{n}`" for n in ours) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    with open(OUT, "w", encoding="utf-8") as fh:
        fh.write(table())
    print(f"wrote {OUT}")
