"""Checkpoints that are either complete or ignored: everything needed to continue a run exactly.

`checkpoint-N/` holds the model (`save_pretrained`), the tokenizer, `trainer_state.pt`
(optimizer, scheduler, guidance controller, python/numpy/torch RNG states, data position,
pending roll-outs), `g2rpo_config.json` (the run config) and, written last,
`checkpoint_manifest.json`: every file's name, size and SHA-256.

- Completeness is the manifest (`manifest.py`): a checkpoint counts only when its manifest
  verifies (every file present, same size, same SHA-256). `find_resumable_checkpoint` walks
  from the newest back and reports each checkpoint it skips and why (truncated, missing or
  changed file).
- Writes are atomic: a checkpoint is built in `.tmp-checkpoint-N-*` inside `output_dir` and
  renamed into place. Re-saving a step that exists (after a resume) renames the old one
  aside, renames the new one in, and deletes the old one last, so a crash at any moment
  leaves a complete `checkpoint-N` or a complete copy that `clean_partial_checkpoints`
  puts back at the next start (it deletes every other leftover `.tmp-checkpoint-*`).
- A full disk raises `NoSpaceLeftError` ("no space left on <dir>"), also for torch's
  `inline_container.cc` writer errors, after removing the partial directory.
"""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import tempfile
import uuid
import warnings

from .manifest import CHECKPOINT_NAME, MANIFEST_FILE, read_manifest, verify_checkpoint, write_manifest

# torch and numpy are imported where used: the manifest checks run before torch is imported
# (`g2rpo-fast eval --checkpoint` checks the checkpoint first).
STATE_FILE = "trainer_state.pt"
TMP_PREFIX = ".tmp-checkpoint-"


class NoSpaceLeftError(OSError):
    """The disk (or quota) filled up while writing a checkpoint; earlier checkpoints are intact."""

    def __init__(self, path: str, detail: str):
        super().__init__(errno.ENOSPC, f"no space left on {path} ({detail}); the partial checkpoint was removed "
                                       f"and earlier checkpoints are intact: free space, then resume with --resume")
        self.path = path

    def __str__(self) -> str:
        return self.strerror


# ---------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- save
def _out_of_space(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    # torch's zip writer reports a failed write as "[enforce fail at inline_container.cc:...]
    # ... unexpected pos N vs M" / "PytorchStreamWriter failed writing file"; safetensors
    # (Rust) as "No space left on device (os error 28)".
    return ("inline_container" in text or "PytorchStreamWriter" in text or "No space left" in text
            or "os error 28" in text or "StorageFull" in text)


def _write_checkpoint_files(tmp: str, step: int, model, tokenizer, trainer_state: dict, config) -> None:
    import torch

    model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    torch.save({**trainer_state, "rng": rng_state(), "step": step}, os.path.join(tmp, STATE_FILE))
    if config is not None:
        config.save_json(os.path.join(tmp, "g2rpo_config.json"))
    write_manifest(tmp, step)


def _swap_into_place(tmp: str, final: str, step: int) -> None:
    """Rename `tmp` to `final`; an existing `final` is moved aside first and deleted last."""
    if not os.path.isdir(final):
        os.replace(tmp, final)
        return
    parent = os.path.dirname(final)
    old = os.path.join(parent, f"{TMP_PREFIX}{step}-old-{uuid.uuid4().hex[:8]}")
    os.rename(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(output_dir: str, step: int, model, tokenizer, trainer_state: dict, config=None,
                    save_total_limit: int | None = None) -> str:
    """Write `output_dir/checkpoint-{step}` atomically (manifest last); returns its path."""
    os.makedirs(output_dir, exist_ok=True)
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = None
    try:
        tmp = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{step}-", dir=output_dir)
        _write_checkpoint_files(tmp, step, model, tokenizer, trainer_state, config)
        _swap_into_place(tmp, final, step)
    except Exception as exc:
        if _out_of_space(exc):
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise NoSpaceLeftError(os.path.abspath(output_dir),
                                   f"while writing checkpoint-{step}: {first_line}") from exc
        raise
    finally:
        if tmp is not None and os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    if save_total_limit:
        prune_checkpoints(output_dir, save_total_limit, keep=final)
    return final


def prune_checkpoints(output_dir: str, limit: int, keep: str | None = None) -> None:
    """Delete the oldest checkpoints beyond `limit`, never `keep` (the one just written)."""
    ckpts = list_checkpoints(output_dir)
    others = [p for p in ckpts if keep is None or os.path.abspath(p) != os.path.abspath(keep)]
    excess = len(ckpts) - limit
    for old in others[:max(excess, 0)]:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- find / load
def list_checkpoints(output_dir: str) -> list[str]:
    """Checkpoints with a manifest (not verified: see `find_resumable_checkpoint`), oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = CHECKPOINT_NAME.match(name)
        path = os.path.join(output_dir, name)
        if m and os.path.isfile(os.path.join(path, MANIFEST_FILE)):
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def checkpoint_dirs(output_dir: str) -> list[str]:
    """Every `checkpoint-N` directory, complete or not, newest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), os.path.join(output_dir, n)) for n in os.listdir(output_dir)
             if (m := CHECKPOINT_NAME.match(n)) and os.path.isdir(os.path.join(output_dir, n))]
    return [p for _, p in sorted(found, reverse=True)]


def find_resumable_checkpoint(output_dir: str) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest checkpoint whose manifest verifies, and the newer ones skipped as
    `(name, reason)`."""
    skipped = []
    for path in checkpoint_dirs(output_dir):
        reason = verify_checkpoint(path)
        if reason is None:
            return path, skipped
        skipped.append((os.path.basename(path), reason))
    return None, skipped


def latest_checkpoint(output_dir: str) -> str | None:
    return find_resumable_checkpoint(output_dir)[0]


def clean_partial_checkpoints(output_dir: str) -> list[str]:
    """Remove `.tmp-checkpoint-*` leftovers of a killed save; a complete copy whose
    `checkpoint-N` is missing (killed between the two renames of a re-save) is put back.
    Returns one line per action."""
    if not os.path.isdir(output_dir):
        return []
    actions = []
    leftovers = sorted(n for n in os.listdir(output_dir) if n.startswith(TMP_PREFIX))
    # The new copy of a re-save (no "-old-") wins over the old one when both are complete.
    leftovers.sort(key=lambda n: "-old-" in n)
    for name in leftovers:
        path = os.path.join(output_dir, name)
        manifest = read_manifest(path)
        if manifest is not None and isinstance(manifest.get("step"), int):
            final = os.path.join(output_dir, f"checkpoint-{manifest['step']}")
            if not os.path.exists(final) and verify_checkpoint(path) is None:
                os.replace(path, final)
                actions.append(f"restored {os.path.basename(final)} from {name} (a re-save was interrupted)")
                continue
        shutil.rmtree(path, ignore_errors=True)
        actions.append(f"removed {name} (left by an interrupted save)")
    return actions


def _notice(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def checkpoint_to_resume(output_dir: str, resume) -> tuple[str | None, str | None]:
    """`resume`: True (the newest checkpoint of `output_dir` that verifies) or a path.
    Returns (path, None), warning about each newer checkpoint skipped and why, or (None, the
    reason there is none)."""
    if resume is not True:
        reason = verify_checkpoint(resume)
        if reason is not None:
            return (None, f"`resume_from_checkpoint`: {resume} is not a complete checkpoint: {reason}")
        return (resume, None)
    path, skipped = find_resumable_checkpoint(output_dir)
    why = "; ".join(f"{name}: {reason}" for name, reason in skipped)
    if path is None:
        return (None, f"`resume`: no complete checkpoint in {output_dir}" + (f" ({why})" if why else ""))
    if skipped:
        _notice(f"resume: skipped {why}; resuming from {os.path.basename(path)}")
    return (path, None)


# Fields whose change makes a resumed run differ from the run it continues.
RESUME_SENSITIVE_FIELDS = ("learning_rate", "num_generations", "seed", "per_device_train_batch_size",
                           "gradient_accumulation_steps", "num_iterations", "loss_type", "beta", "epsilon",
                           "temperature", "guidance_schedule", "guidance_ratio", "lr_scheduler_type",
                           "model_name_or_path", "dataset_name", "reward_funcs", "reward_weights")


def warn_changed_config(checkpoint: str, config) -> list[str]:
    """Warn, listing each field of RESUME_SENSITIVE_FIELDS whose value differs from the
    checkpoint's `g2rpo_config.json`; returns the changes."""
    saved = load_checkpoint_config(checkpoint)
    if saved is None:
        return []
    now = config.to_dict()
    changes = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in RESUME_SENSITIVE_FIELDS
               if k in saved and saved[k] != now.get(k)]
    if changes:
        _notice(f"resume: the configuration differs from {os.path.basename(os.path.normpath(checkpoint))}'s: "
                f"{', '.join(changes)}; training continues with the new values")
    return changes


def load_model_weights(model, path: str) -> None:
    """Load saved weights into an existing model (tied weights may be absent from the file)."""
    from safetensors.torch import load_file

    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise ValueError(f"checkpoint {path} holds no .safetensors weights")
    state = {}
    for f in files:
        state.update(load_file(os.path.join(path, f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set()
    if getattr(model.config, "tie_word_embeddings", False):
        tied = {k for k in missing if "lm_head" in k}
    if set(missing) - tied or unexpected:
        raise ValueError(f"checkpoint {path} does not match the model: missing {sorted(set(missing) - tied)}, "
                         f"unexpected {sorted(unexpected)}")
    if tied:
        model.tie_weights()


def load_trainer_state(path: str) -> dict:
    import torch

    return torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=False)


def load_checkpoint_config(path: str) -> dict | None:
    """The run config saved with a checkpoint (`g2rpo_config.json`), or None."""
    try:
        with open(os.path.join(path, "g2rpo_config.json"), encoding="utf-8") as fh:
            values = json.load(fh)
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) else None
