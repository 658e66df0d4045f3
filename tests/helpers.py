"""Tiny, fast pieces shared by the tests: a random tiny Qwen3, the char tokenizer, a small
addition dataset (no warm start, no download), a dense toy reward, and the trainer set-up of the
trainer tests. Imported by name (`from helpers import ...`; tests/ is on sys.path) and by the
CLI tests' subprocesses as `helpers:digit_fraction_reward` (they put tests/ on PYTHONPATH), so
nothing heavy is imported at module level."""
from __future__ import annotations

import json
import os

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def child_env(*paths, **variables) -> dict:
    """The environment of a child process that imports `helpers` (and `paths` first)."""
    # No empty entries: an empty PYTHONPATH entry means the child's cwd.
    entries = [*paths, TESTS_DIR, *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    path = os.pathsep.join(e for e in entries if e)
    return {**os.environ, **variables, "PYTHONPATH": path}


def tiny_model_and_tokenizer(seed: int = 0, hidden_size: int = 32, layers: int = 2, attn_implementation="sdpa"):
    from g2rpo_fast.models.tiny import build_tiny_model
    from g2rpo_fast.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    model = build_tiny_model(seed, tokenizer=tok, hidden_size=hidden_size, num_hidden_layers=layers,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=16, intermediate_size=64)
    model.config._attn_implementation = attn_implementation
    return model, tok


def tiny_dataset(n: int = 16, seed: int = 0, difficulties=(1, 2), split: str = "train"):
    from g2rpo_fast.data.arithmetic import make_dataset

    return make_dataset(n, seed=seed, difficulties=list(difficulties), split=split)


def digit_fraction_reward(prompts, completions, **kwargs):
    """A dense toy reward (share of digit characters) so that even a random policy gets
    non-constant rewards within a group."""
    out = []
    for c in completions:
        text = c if isinstance(c, str) else c[-1]["content"]
        out.append(sum(ch.isdigit() for ch in text) / max(len(text), 1))
    return out


# ------------------------------------------------------------------ rewards that misbehave
# Module level, so that a reward worker process (`reward_isolation: process`) and the CLI's
# `helpers:name` can import them. The call count is per process.
_CALLS = {"n": 0}


def _nth_call() -> int:
    _CALLS["n"] += 1
    return _CALLS["n"]


def interrupting_reward(prompts, completions, **kwargs):
    """Scores like `digit_fraction_reward` on its first call, raises KeyboardInterrupt after."""
    if _nth_call() > 1:
        raise KeyboardInterrupt
    return digit_fraction_reward(prompts, completions)


def exiting_reward(prompts, completions, **kwargs):
    """Scores on its first call, then ends the process that runs it with `os._exit(0)`: no
    exception, no clean-up, status 0 (what no try/except can catch)."""
    if _nth_call() > 1:
        os._exit(0)
    return digit_fraction_reward(prompts, completions)


def dying_reward(prompts, completions, **kwargs):
    os._exit(0)


def sys_exit_reward(prompts, completions, **kwargs):
    import sys

    sys.exit(3)


def crashing_reward(prompts, completions, **kwargs):
    """A segmentation fault, as a broken extension module would cause."""
    import ctypes

    ctypes.string_at(0)


def hanging_reward(prompts, completions, **kwargs):
    import time

    time.sleep(3600)


def pid_reward(prompts, completions, **kwargs):
    """The id of the process that runs it (mod 10^6, the reward limit), as every sample's reward."""
    return [float(os.getpid() % 1_000_000)] * len(completions)


def save_tiny_assets(root) -> tuple[str, str]:
    """(model dir, train jsonl) under `root`: the tiny random Qwen3 + char tokenizer saved with
    `save_pretrained`, and 12 addition problems, for CLI runs on local files only; beside them
    `eval.jsonl` (`eval_file`), 8 held-out problems."""
    model, tok = tiny_model_and_tokenizer(seed=0)
    model.save_pretrained(os.path.join(root, "model"))
    tok.save_pretrained(os.path.join(root, "model"))
    data = os.path.join(root, "data.jsonl")
    for path, rows in ((data, tiny_dataset(12)), (eval_file(data), tiny_dataset(8, split="eval"))):
        with open(path, "w") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    return os.path.join(root, "model"), data


def eval_file(data: str) -> str:
    """The held-out rows that `save_tiny_assets` writes beside its training file."""
    return os.path.join(os.path.dirname(data), "eval.jsonl")


# ------------------------------------------------------------------ the trainer tests' set-up

def make_config(tmp_path, name="run", **kw):
    """A 2-step run of the tiny trainer set-up (G=4, 8 completions, 8 new tokens) in tmp_path/name."""
    from g2rpo_fast.trainer.config import G2RPOConfig

    # the values these tests were written for, stated (G2RPOConfig's defaults are TRL's)
    base = dict(output_dir=str(tmp_path / name), num_generations=4, per_device_train_batch_size=8,
                max_completion_length=8, max_steps=2, learning_rate=1e-2, warmup_steps=0,
                lr_scheduler_type="constant_with_warmup", optim="adamw_torch", adam_beta2=0.99, temperature=1.2,
                max_prompt_length=256, gradient_checkpointing=False, logging_steps=1, save_steps=25,
                save_total_limit=2,
                guidance_initial_length=4, guidance_max_length=8, guidance_ratio=0.5,
                reward_funcs=[digit_fraction_reward, "accuracy"], guidance_reward="accuracy", eval_at_end=False,
                plots=False, progress_bar=False, seed=0)
    base.update(kw)
    return G2RPOConfig(**base)


def make_trainer(cfg, **kw):
    from g2rpo_fast.trainer.trainer import G2RPOTrainer

    model, tok = tiny_model_and_tokenizer(seed=0)
    return G2RPOTrainer(cfg, model=model, tokenizer=tok, train_dataset=tiny_dataset(16), **kw)


def read_metrics(cfg):
    with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def strip_timing(rows):
    from g2rpo_fast.trainer.metrics_log import TIMING_KEYS

    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def fixed_rollouts(trainer) -> list[bool]:
    """Replace the trainer's roll-outs by completions that depend only on the prompt tokens and
    the sample's index among identical prompts (not on seeds, ranks or batch layout), so that
    runs over different world sizes train on the same completions. The real engine still runs
    once per call (on the first prompt) to exercise the weights it reads. Returns a list that
    records, per call, whether the parameters were whole tensors (not FSDP shards) then."""
    from g2rpo_fast.rollout.engine import RolloutOutput

    alphabet = trainer.tokenizer.encode("0123456789+= x", add_special_tokens=False)
    real, record = trainer.engine.generate, []

    def generate(prompts, max_new_tokens, **kwargs):
        record.append(all(type(p).__name__ != "DTensor" for p in trainer.model.parameters()))
        real(prompts[:1], max_new_tokens=2)
        seen, outs = {}, []
        for p in prompts:
            key = tuple(p)
            copy = seen[key] = seen.get(key, -1) + 1
            h = sum((i + 1) * t for i, t in enumerate(p))
            n = 1 + (h + 3 * copy) % max_new_tokens
            outs.append(RolloutOutput([alphabet[(h * 7 + copy * 5 + j * 3) % len(alphabet)] for j in range(n)],
                                      None, "length"))
        return outs

    trainer.engine.generate = generate
    return record
