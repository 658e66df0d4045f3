"""Phase 4 of a step: its metrics, `metrics.jsonl` (one JSON object per optimiser step) and
the progress line (or tqdm bar)."""
from __future__ import annotations

import json
import math
import os
import warnings

import numpy as np
import torch

from g2rpo_fast.rollout.dynamic_sampling import equal_reward_groups

TIMING_KEYS = ("tokens_per_s", "step_time_s", "rollout_time_s", "train_time_s")
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


def step_metrics(batches, *, num_generations: int, guidance_length: float, learning_rate: float,
                 reward_names, train_metrics: dict) -> dict:
    """Rewards, accuracy (the guidance reward), advantage std, guidance and completion
    statistics of the step's `RolloutBatch`es, then `train_metrics`, then each reward's mean."""
    samples = [s for b in batches for s in b.samples]
    rewards = [r for b in batches for r in b.scores.total]
    guide = [r for b in batches for r in b.scores.guide]
    adv = torch.cat([b.advantages.float().cpu() for b in batches])
    groups = torch.tensor(rewards).view(-1, num_generations)
    unguided = [r for s, r in zip(samples, guide) if not s.guided]
    guided = [r for s, r in zip(samples, guide) if s.guided]
    m = {
        "reward": float(np.mean(rewards)),
        "reward_std": float(groups.std(dim=1).mean()) if num_generations > 1 else 0.0,
        "accuracy": float(np.mean(guide)),
        "accuracy_unguided": float(np.mean(unguided)) if unguided else float("nan"),
        "accuracy_guided": float(np.mean(guided)) if guided else float("nan"),
        "advantage_std": float(adv.std()) if adv.numel() > 1 else 0.0,
        "guidance_length": float(guidance_length),
        **group_outcomes(rewards, num_generations),
        **guidance_split(samples, rewards),
        "guided_fraction": float(np.mean([s.guided for s in samples])),
        "completion_length": float(np.mean([len(s.completion_ids) for s in samples])),
        "generated_length": float(generated_tokens(batches) / max(len(samples), 1)),
        "truncated_ratio": float(np.mean([s.truncated for s in samples])),
        "learning_rate": float(learning_rate),
        **train_metrics,
    }
    for k, name in enumerate(reward_names):
        m[f"rewards/{name}"] = float(np.mean([r for b in batches for r in b.scores.per_func[k]]))
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


TENSORBOARD_DIR = "runs"


class MetricsLog:
    """Appends each step to `metrics.jsonl` and prints a progress line every `logging_steps`
    (through a tqdm bar when `progress_bar`); with `report_to="tensorboard"` also writes every
    finite numeric metric as a scalar (tag = the metrics.jsonl key) under `<output_dir>/runs/`.
    Used on rank 0 only."""

    def __init__(self, path: str, max_steps: int, logging_steps: int, progress_bar: bool, initial_step: int,
                 report_to: str = "none"):
        self.path, self.max_steps, self.logging_steps = path, max_steps, logging_steps
        self.writer = None
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            # on resume, drop the earlier run's events past the checkpoint, as metrics.jsonl is cut
            self.writer = SummaryWriter(log_dir=os.path.join(os.path.dirname(path) or ".", TENSORBOARD_DIR),
                                        purge_step=initial_step + 1 if initial_step else None)
        self.bar = None
        if progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=max_steps, initial=initial_step, desc="g2rpo", dynamic_ncols=True)

    def log(self, step: int, m: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(_jsonable(m)) + "\n")
        if self.writer is not None:
            for key, value in m.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                        and key != "step":
                    self.writer.add_scalar(key, value, global_step=step)
            self.writer.flush()
        line = (f"step {step}/{self.max_steps} reward {m['reward']:.3f} acc {m['accuracy']:.3f} "
                f"adv_std {m['advantage_std']:.3f} zero_std {m['frac_reward_zero_std']:.2f} "
                f"len {m['guidance_length']:.0f} loss {m['loss']:.4f} "
                f"{m['step_time_s']:.1f}s")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(reward=f"{m['reward']:.3f}", acc=f"{m['accuracy']:.3f}", l=int(m["guidance_length"]))
            if step % self.logging_steps == 0:
                self.bar.write(line)
        elif step % self.logging_steps == 0:
            print(line, flush=True)

    def close(self) -> None:
        """Idempotent: the trainer closes it at the end of a run and again on any way out."""
        if self.writer is not None:
            self.writer.close()
        if self.bar is not None:
            self.bar.close()
        self.writer = self.bar = None
