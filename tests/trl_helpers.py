"""Set-up shared by the TRL integration tests and their `accelerate launch` child: the tiny Qwen3
and char tokenizer saved to a folder (TRL loads its reference model from the policy's path), a
dataset with a reference-solution column, and the configs of both trainers (fp32 on the CPU:
TRL's default bf16=True would run the CPU forward under bf16 autocast)."""
from __future__ import annotations

import os

from helpers import tiny_dataset, tiny_model_and_tokenizer

# 2 prompts x G = 4 per step, 8 new tokens: a step takes well under a second on the CPU.
BASE = dict(num_generations=4, per_device_train_batch_size=8, max_completion_length=8, max_steps=2,
            learning_rate=1e-2, logging_steps=1, report_to="none", save_strategy="no", seed=0, use_cpu=True,
            bf16=False, disable_tqdm=True)


def save_tiny_policy(root) -> str:
    """The tiny random Qwen3 + char tokenizer under `root/policy` (saved once), its path."""
    path = os.path.join(root, "policy")
    if not os.path.isdir(path):
        model, tok = tiny_model_and_tokenizer(seed=0)
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return path


def load_policy(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32", attn_implementation="sdpa")
    return model, AutoTokenizer.from_pretrained(path)


def solution_dataset(n: int = 16, solutions: dict | None = None):
    """The tiny addition rows as a `datasets.Dataset` (prompt, solution, answer); `solutions` replaces
    the solution of the rows at the given indices."""
    from datasets import Dataset

    rows = [dict(prompt=r["prompt"], solution=r["solution"], answer=r["answer"]) for r in tiny_dataset(n)]
    for i, text in (solutions or {}).items():
        rows[i]["solution"] = text
    return Dataset.from_list(rows)


def guided_config(out, **kw):
    from g2rpo_fast.integrations.trl import GuidedGRPOConfig

    return GuidedGRPOConfig(output_dir=str(out), **{**BASE, **kw})


def trl_config(out, **kw):
    from trl import GRPOConfig

    return GRPOConfig(output_dir=str(out), **{**BASE, **kw})
