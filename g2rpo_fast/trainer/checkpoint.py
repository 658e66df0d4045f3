"""Atomic checkpoints: everything needed to continue a run exactly where it stopped.

`checkpoint-N/` holds the model (`save_pretrained`), the tokenizer, `trainer_state.pt`
(optimizer, scheduler, guidance controller, python/numpy/torch RNG states, data position,
pending roll-outs) and `g2rpo_config.json` (the run config). It is written into a temporary directory inside
`output_dir` and moved into place with `os.replace`, so a crash never leaves a half-written
`checkpoint-N`; `latest_checkpoint` only considers complete ones.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import tempfile

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str, step: int, model, tokenizer, trainer_state: dict, config=None,
                    save_total_limit: int | None = None) -> str:
    """Write `output_dir/checkpoint-{step}` atomically; returns its path."""
    os.makedirs(output_dir, exist_ok=True)
    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp = tempfile.mkdtemp(prefix=f".tmp-checkpoint-{step}-", dir=output_dir)
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        torch.save({**trainer_state, "rng": rng_state(), "step": step}, os.path.join(tmp, STATE_FILE))
        if config is not None:
            config.save_json(os.path.join(tmp, "g2rpo_config.json"))
        if os.path.isdir(final):  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    if save_total_limit:
        for old in list_checkpoints(output_dir)[:-save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoints, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = _CKPT.match(name)
        path = os.path.join(output_dir, name)
        if m and os.path.isfile(os.path.join(path, STATE_FILE)):
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str) -> str | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


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
    return torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=False)
