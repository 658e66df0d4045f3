"""Dataset loading and checks for the trainer, plus the deterministic prompt order.

The embedded task is built with `g2rpo_fast.data.arithmetic.make_dataset`; other names go
through `g2rpo_fast.data.load_prompts` (hub names, local json/jsonl/parquet files).
"""
from __future__ import annotations

import inspect

import numpy as np

from g2rpo_fast.data import load_prompts
from g2rpo_fast.models.warmstart import is_embedded


def load_split(config, split: str, train: bool):
    if is_embedded(config.dataset_name):
        from g2rpo_fast.data.arithmetic import make_dataset

        if train:
            return make_dataset(config.embedded_train_size, seed=config.seed,
                                difficulties=list(config.embedded_difficulties), split="train")
        return make_dataset(config.embedded_eval_size, seed=0, difficulties=list(config.embedded_difficulties),
                            split="eval")
    # Hub names and local json/jsonl/parquet/csv files; GSM8K / MATH columns are normalised.
    return load_prompts(config.dataset_name, split=split, config=config.dataset_config)


def required_columns(fn) -> list[str]:
    """Dataset columns a TRL-style reward function needs: its parameters after
    (prompts, completions) that have no default."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    out = []
    for p in params[2:]:
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty:
            out.append(p.name)
    return out


def check_columns(dataset, config, reward_funcs, what: str = "train dataset") -> None:
    cols = set(dataset.column_names)
    if config.prompt_field not in cols:
        raise ValueError(f"`prompt_field`: the {what} has no column {config.prompt_field!r} "
                         f"(columns: {sorted(cols)})")
    if what == "train dataset" and config.n_guided > 0 and config.guidance_field not in cols:
        raise ValueError(f"`guidance_field`: the {what} has no column {config.guidance_field!r} needed for "
                         f"guided roll-outs (columns: {sorted(cols)}); set guidance_schedule=none or "
                         f"guidance_ratio=0 to train without guidance")
    for fn in reward_funcs:
        missing = [c for c in required_columns(fn) if c not in cols]
        if missing:
            name = getattr(fn, "__name__", repr(fn))
            raise ValueError(f"`reward_funcs`: {name} needs column(s) {missing} that the {what} lacks "
                             f"(columns: {sorted(cols)})")
    if len(dataset) == 0:
        raise ValueError(f"`dataset_name`: the {what} is empty")


def prompt_order(n: int, epoch: int, seed: int, curriculum: bool) -> np.ndarray:
    """Index order of one epoch: a seeded permutation, or the dataset order (curriculum)."""
    if curriculum:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


def take_indices(n: int, start: int, count: int, seed: int, curriculum: bool) -> list[int]:
    """Global prompt indices at positions [start, start + count) of the epoch-by-epoch stream."""
    out, pos = [], start
    while len(out) < count:
        epoch, offset = divmod(pos, n)
        order = prompt_order(n, epoch, seed, curriculum)
        chunk = order[offset:offset + (count - len(out))]
        out.extend(int(i) for i in chunk)
        pos += len(chunk)
    return out
