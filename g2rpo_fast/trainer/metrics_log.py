"""Phase 4 of a step: its metrics, `metrics.jsonl` (one JSON object per optimiser step) and
the progress line (or tqdm bar)."""
from __future__ import annotations

import json
import math
import os
import sys
import warnings

import numpy as np
import torch

from g2rpo_fast.rollout.dynamic_sampling import equal_reward_groups

TIMING_KEYS = ("tokens_per_s", "step_time", "rollout_time_s", "train_time_s")
# Group-outcome metrics (`group_outcomes`), all over the groups' total rewards (what the
# advantages see). TRL's name where it has one (frac_reward_zero_std).
GROUP_KEYS = ("frac_reward_zero_std", "frac_groups_all_zero", "frac_groups_all_one")


def group_outcomes(rewards, num_generations: int) -> dict:
    """Fractions of the step's groups: `frac_reward_zero_std` (TRL's): all G rewards equal, so
    every advantage is 0 and the group teaches nothing; `frac_groups_all_zero`: every reward
    <= 0 (with 0/1 rewards: all wrong); `frac_groups_all_one`: every reward >= 1 (all right).
    With other rewards the two are "no sample scored above 0" and "every sample scored at
    least 1"; a group can be zero-std without being either (e.g. all 0.5)."""
    groups = np.asarray(rewards, dtype=np.float64).reshape(-1, num_generations)
    equal = equal_reward_groups(rewards, num_generations)
    return {"frac_reward_zero_std": float(equal.mean()),
            "frac_groups_all_zero": float((groups <= 0).all(axis=1).mean()),
            "frac_groups_all_one": float((groups >= 1).all(axis=1).mean())}


def guidance_split(samples, rewards) -> dict:
    """`reward_guided` / `reward_unguided`: mean total reward of the guided / unguided samples,
    None (JSON null, left out of TensorBoard) when the step has none of that kind;
    `guidance_length_injected`: mean guidance tokens actually given to a guided sample (less
    than ℓ when the solution is shorter), 0.0 when no sample is guided."""
    guided = [r for s, r in zip(samples, rewards) if s.guided]
    unguided = [r for s, r in zip(samples, rewards) if not s.guided]
    injected = [len(s.guidance_ids) for s in samples if s.guided]
    return {"reward_guided": float(np.mean(guided)) if guided else None,
            "reward_unguided": float(np.mean(unguided)) if unguided else None,
            "guidance_length_injected": float(np.mean(injected)) if injected else 0.0}


# The loss's metric names (loss/metrics.py) -> TRL's logged keys for the same quantities.
TRL_LOSS_KEYS = {"clip_ratio_low": "clip_ratio/low_mean", "clip_ratio_high": "clip_ratio/high_mean",
                 "clip_ratio": "clip_ratio/region_mean"}


def completion_lengths(samples) -> dict:
    """TRL's completions/* keys over the completion tokens (guidance + generated: what is rewarded
    and trained on); "terminated" are the completions that ended with a stop token."""
    lengths = np.array([len(s.completion_ids) for s in samples], dtype=np.float64)
    ended = np.array([not s.truncated for s in samples])
    done = lengths[ended] if ended.any() else np.zeros(1)  # TRL's convention when none ended
    return {"completions/mean_length": float(lengths.mean()), "completions/min_length": float(lengths.min()),
            "completions/max_length": float(lengths.max()), "completions/clipped_ratio": float(1 - ended.mean()),
            "completions/mean_terminated_length": float(done.mean()),
            "completions/min_terminated_length": float(done.min()),
            "completions/max_terminated_length": float(done.max())}


def sampling_entropy(samples) -> float | None:
    """TRL's `entropy`: the mean entropy per generated token of the distribution the roll-out
    sampled from (the policy at the training temperature); None when the engine did not track it."""
    tracked = [(s.entropy, len(s.generated_ids)) for s in samples if s.entropy is not None and s.generated_ids]
    if not tracked:
        return None
    return float(sum(e * n for e, n in tracked) / sum(n for _, n in tracked))


def step_metrics(batches, *, num_generations: int, guidance_length: float, learning_rate: float,
                 reward_names, train_metrics: dict) -> dict:
    """Rewards, accuracy (the guidance reward), advantage std, guidance and completion
    statistics of the step's `RolloutBatch`es, then `train_metrics`, then each reward's mean and
    std. TRL's key where the quantity is TRL's (reward, reward_std, frac_reward_zero_std,
    rewards/<name>/mean|std, completions/*, entropy, clip_ratio/*, kl, loss, grad_norm,
    learning_rate); ours besides (accuracy, advantage_std, guidance_*, reward_std_in_group, ...)."""
    samples = [s for b in batches for s in b.samples]
    rewards = [r for b in batches for r in b.scores.total]
    guide = [r for b in batches for r in b.scores.guide]
    adv = torch.cat([b.advantages.float().cpu() for b in batches])
    groups = torch.tensor(rewards).view(-1, num_generations)
    unguided = [r for s, r in zip(samples, guide) if not s.guided]
    guided = [r for s, r in zip(samples, guide) if s.guided]
    m = {
        "reward": float(np.mean(rewards)),
        # TRL's: the std of all the step's rewards (unbiased, as torch.std)
        "reward_std": float(torch.tensor(rewards).std()) if len(rewards) > 1 else 0.0,
        # ours: the mean over groups of the std within each group (what the advantages divide by)
        "reward_std_in_group": float(groups.std(dim=1).mean()) if num_generations > 1 else 0.0,
        "accuracy": float(np.mean(guide)),
        "accuracy_unguided": float(np.mean(unguided)) if unguided else float("nan"),
        "accuracy_guided": float(np.mean(guided)) if guided else float("nan"),
        "advantage_std": float(adv.std()) if adv.numel() > 1 else 0.0,
        "guidance_length": float(guidance_length),
        **group_outcomes(rewards, num_generations),
        **guidance_split(samples, rewards),
        "guided_fraction": float(np.mean([s.guided for s in samples])),
        **completion_lengths(samples),
        "generated_length": float(generated_tokens(batches) / max(len(samples), 1)),
        "entropy": sampling_entropy(samples),
        "learning_rate": float(learning_rate),
        **{TRL_LOSS_KEYS.get(k, k): v for k, v in train_metrics.items()},
    }
    for k, name in enumerate(reward_names):
        values = torch.tensor([r for b in batches for r in b.scores.per_func[k]], dtype=torch.float64)
        m[f"rewards/{name}/mean"] = float(values.mean())
        m[f"rewards/{name}/std"] = float(values.std()) if values.numel() > 1 else 0.0
    m.update(sampling_metrics(batches, num_generations))
    return m


def sampling_metrics(batches, num_generations: int) -> dict:
    """What the step generated, before dynamic sampling's filter (without it: the step's
    batches themselves): `sampling_rounds` (generation rounds: each generates every micro-batch),
    `sampled_groups`, `sampled_frac_reward_zero_std` (of those groups) and `sampled_accuracy`
    (mean guidance reward of every generated sample: what the guidance controller sees)."""
    stats = [getattr(b, "sampling", None) or {"rounds": 1, "groups": len(b.samples) // num_generations,
                            "equal_groups": int(equal_reward_groups(b.scores.total, num_generations).sum()),
                            "guide_sum": float(sum(b.scores.guide))} for b in batches]
    groups = sum(s["groups"] for s in stats)
    return {"sampling_rounds": max(s["rounds"] for s in stats), "sampled_groups": groups,
            "sampled_frac_reward_zero_std": sum(s["equal_groups"] for s in stats) / max(groups, 1),
            "sampled_accuracy": sum(s["guide_sum"] for s in stats) / max(groups * num_generations, 1)}


def generated_tokens(batches) -> int:
    return sum(len(s.generated_ids) for b in batches for s in b.samples)


def sequence_tokens(batches) -> int:
    """Prompt + completion tokens of the samples (TRL's num_tokens counts these, cumulatively)."""
    return sum(len(s.prompt_ids) + len(s.completion_ids) for b in batches for s in b.samples)


def _jsonable(m: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in m.items()}


def write_metrics(path: str, history: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for m in history:
            fh.write(json.dumps(_jsonable(m)) + "\n")


def read_metrics(path: str, upto: int | None = None) -> list[dict]:
    """The logged steps up to `upto` (the checkpoint's step; None: all). A line that is not a
    JSON object, such as the torn last line of a run killed mid-write or on a full disk, is
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
            if upto is None or m["step"] <= upto:
                out.append(m)
    if bad:
        warnings.warn(f"resume: {path}: skipped unreadable line(s) {bad} (torn by an interrupted write); the "
                      f"metrics are kept up to step {upto}", RuntimeWarning, stacklevel=2)
    return out


def rebuild_metrics(logged: list[dict], saved: list[dict] | None, upto: int, checkpoint: str) -> list[dict]:
    """Steps 1..`upto`, each as logged in metrics.jsonl, else from the checkpoint's copy
    (`saved`: the trainer state's `metrics`) with one warning naming the rebuilt steps, else
    left out with a warning naming each step that is lost (a checkpoint written before
    checkpoints held the metrics)."""
    by_step = {m["step"]: m for m in logged if m["step"] <= upto}
    kept = {m["step"]: m for m in saved or [] if isinstance(m, dict) and isinstance(m.get("step"), int)}
    rows, rebuilt, lost = [], [], []
    for step in range(1, upto + 1):
        if step in by_step:
            rows.append(by_step[step])
        elif step in kept:
            rows.append(kept[step])
            rebuilt.append(step)
        else:
            lost.append(step)
    name = os.path.basename(checkpoint.rstrip(os.sep))
    if rebuilt:
        warnings.warn(f"resume: metrics.jsonl lacked step(s) {rebuilt} (a torn line or a deleted file); rebuilt "
                      f"from {name}", RuntimeWarning, stacklevel=2)
    if lost:
        warnings.warn(f"resume: the metrics of step(s) {lost} are lost: neither metrics.jsonl nor {name} holds "
                      f"them", RuntimeWarning, stacklevel=2)
    return rows


COMPLETIONS_FILE = "completions.jsonl"


def completion_rows(batches, step: int, guidance_length, decode, reward_names) -> list[dict]:
    """One row per sample: prompt, completion (guidance + generated, what the rewards saw),
    total reward, each reward function's, advantage, guided flag and guidance tokens given."""
    rows = []
    for b in batches:
        for i, s in enumerate(b.samples):
            row = {"step": step, "prompt": decode(s.prompt_ids), "completion": s.text,
                   "reward": float(b.scores.total[i]), "advantage": float(b.advantages[i]), "guided": s.guided,
                   "guidance_length": len(s.guidance_ids), "guidance_length_target": int(guidance_length)}
            row.update({f"rewards/{name}": float(b.scores.per_func[k][i]) for k, name in enumerate(reward_names)})
            rows.append(row)
    return rows


# Logged as they stand at the logging step, never averaged: the running counts (TRL logs
# num_tokens as state.num_input_tokens_seen, transformers epoch as state.epoch), and what
# transformers' Trainer logs from the last step alone (learning_rate, grad_norm).
RUNNING_KEYS = ("step", "epoch", "num_tokens", "steps_skipped", "learning_rate", "grad_norm")


def window_mean(window: list[dict]) -> dict:
    """TRL's logged values: each key's mean over the steps since the last log (None and NaN
    left out; a key with no number in the window is dropped); `RUNNING_KEYS` at the last step."""
    keys = dict.fromkeys(k for m in window for k in m)
    out = {}
    for key in keys:
        values = [m[key] for m in window if isinstance(m.get(key), (int, float)) and not isinstance(m.get(key), bool)
                  and math.isfinite(m[key])]
        if values:
            out[key] = float(values[-1] if key in RUNNING_KEYS else np.mean(values))
    out["step"] = window[-1]["step"]
    return out


class MetricsLog:
    """Appends each step to `metrics.jsonl`. Every `logging_steps` (and at the last step, and at
    step 1 with `logging_first_step`) it takes the mean of the steps since the last log, prints
    it as one line (through a tqdm bar when there is one: `progress_bar`, by default only when
    stdout is a terminal, so a log file gets clean lines) and sends it to `report_to`
    (`g2rpo_fast/reporting.py`); `log` returns it for the callbacks' `on_log`. Rank 0 only."""

    def __init__(self, path: str, max_steps: int, config, initial_step: int, decode=None, reward_names=()):
        from g2rpo_fast.reporting import Reporters

        self.path, self.max_steps = path, max_steps
        # log_completions: rows of the logging steps' samples (`completion_rows`), decoded with `decode`
        self.completions = config.log_completions
        self.to_print, self.decode, self.reward_names = config.num_completions_to_print, decode, list(reward_names)
        self.logging_steps, self.first_step = config.logging_steps, config.logging_first_step
        self.window: list[dict] = []
        self.reporters = Reporters(config.report_targets, os.path.dirname(path) or ".", config.run_name,
                                   config.to_dict(), initial_step)
        show = config.progress_bar if config.progress_bar is not None else sys.stdout.isatty()
        self.bar = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=max_steps, initial=initial_step, desc="g2rpo", dynamic_ncols=True)

    def log(self, step: int, m: dict, batches=()) -> dict | None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(_jsonable(m)) + "\n")
        self.window.append(m)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(reward=f"{m['reward']:.3f}", acc=f"{m['accuracy']:.3f}", l=int(m["guidance_length"]))
        if not (step % self.logging_steps == 0 or step == self.max_steps or (self.first_step and step == 1)):
            return None
        logs, self.window = window_mean(self.window), []
        self.print(f"step {step}/{self.max_steps} reward {logs['reward']:.3f} acc {logs['accuracy']:.3f} "
                   f"adv_std {logs['advantage_std']:.3f} zero_std {logs['frac_reward_zero_std']:.2f} "
                   f"len {logs['guidance_length']:.0f} loss {logs['loss']:.4f} {m['step_time']:.1f}s")
        self.reporters.log(step, logs)
        if self.completions and batches:
            self.log_completions(step, completion_rows(batches, step, m["guidance_length"], self.decode,
                                                       self.reward_names))
        return logs

    def log_completions(self, step: int, rows: list[dict]) -> None:
        """`log_completions` (TRL's): the step's samples to completions.jsonl, wandb and stdout."""
        with open(os.path.join(os.path.dirname(self.path) or ".", COMPLETIONS_FILE), "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
        self.reporters.log_table(step, "completions", rows)
        for row in rows[:self.to_print if self.to_print is not None else len(rows)]:
            tag = f"guided ℓ={row['guidance_length']}" if row["guided"] else "unguided"
            self.print(f"  [{tag}] reward {row['reward']:.3f}: {row['prompt']!r} -> {row['completion']!r}")

    def log_eval(self, step: int, metrics: dict) -> None:
        """An evaluation during training (eval_strategy, eval_on_start): printed and reported."""
        self.print(f"step {step}/{self.max_steps} " + " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                              for k, v in metrics.items()))
        self.reporters.log(step, metrics)

    def print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        """Idempotent: the trainer closes it at the end of a run and again on any way out."""
        if self.reporters is not None:
            self.reporters.close()
        if self.bar is not None:
            self.bar.close()
        self.reporters = self.bar = None
