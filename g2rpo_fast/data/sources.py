"""The data sets of a run, from its config: which source a name means, loading a split, the
checks of every row before the model loads, and the deterministic prompt order.

Every name goes through `loading.load_prompts`: the built-in task (`is_embedded`), hub names,
local json/jsonl/parquet/csv files.
"""
from __future__ import annotations

import inspect
import os

from g2rpo_fast.data.loading import hub_offline, is_embedded, load_prompts, looks_like_local_path
from g2rpo_fast.data.validation import (
    is_json_lines,
    local_data_files,
    validate_jsonl_file,
    validate_prompts_for_model,
    validate_rows,
)


def needs_solutions(config, train: bool) -> bool:
    return train and config.n_guided > 0


def check_dataset_source(config, required: dict | None = None) -> None:
    """Before anything heavy loads: a local dataset exists and its JSON-lines files are
    well formed row by row (streamed; `required`: `reward_columns`); a hub name is checked
    when it loads."""
    name = config.dataset_name
    if is_embedded(name):
        return
    if os.path.exists(name):
        files = local_data_files(name)
        if not files:
            raise ValueError(f"`dataset_name`: no json/jsonl/parquet/csv files in {name}")
        guidance = config.guidance_field if needs_solutions(config, True) else None
        for path in files:
            if is_json_lines(path):
                validate_jsonl_file(path, config.prompt_field, guidance, required)
        return
    if looks_like_local_path(name):
        raise ValueError(f"`dataset_name`: no such file or directory: {name}")


def load_split(config, split: str, train: bool, required: dict | None = None):
    """The split as a `datasets.Dataset` (a local JSON-lines file checked row by row first)."""
    name = config.dataset_name
    if is_embedded(name):  # the built-in task: its sizes and levels come from the config
        return load_prompts(name, split="train" if train else "eval", required=(),
                            num_examples=config.embedded_train_size if train else config.embedded_eval_size,
                            seed=config.seed if train else 0, difficulties=list(config.embedded_difficulties))
    check_dataset_source(config, required)
    # Hub names and local json/jsonl/parquet/csv files; GSM8K / MATH columns are normalised.
    try:
        return load_prompts(name, split=split, config=config.dataset_config, required=())
    except Exception as exc:  # datasets / pyarrow / hub errors: the user's data or name
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        hint = ""
        if not os.path.exists(name) and hub_offline():
            hint = "; the hub is off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): only cached datasets load"
        raise ValueError(f"`dataset_name`: cannot load {name!r} (split {split!r}): {type(exc).__name__}: "
                         f"{detail}{hint}") from None


def dataset_source(config, split: str, required: dict | None = None):
    """How messages name the data set, and the line of each row for a single JSON-lines file."""
    name = config.dataset_name
    if isinstance(name, str) and os.path.isfile(name) and is_json_lines(name):
        guidance = config.guidance_field if needs_solutions(config, True) else None
        return name, validate_jsonl_file(name, config.prompt_field, guidance, required)
    if isinstance(name, str) and os.path.exists(name):
        return name, None
    return f"{name} (split {split})", None


def validate_dataset(dataset, config, split: str, train: bool, source: str | None = None,
                     required: dict | None = None) -> None:
    """Every row's prompt (and reference solution when guided, and the columns the reward
    functions take: `required`) before the model loads."""
    line_of_row = None
    if source is None:
        source, line_of_row = dataset_source(config, split, required)
    guidance = config.guidance_field if needs_solutions(config, train) else None
    validate_rows(dataset, config.prompt_field, guidance, source, line_of_row, required)


def validate_dataset_for_model(dataset, config, tokenizer, context_length, split: str, source=None) -> None:
    line_of_row = None
    if source is None:
        source, line_of_row = dataset_source(config, split)
    validate_prompts_for_model(dataset, config, tokenizer, context_length, source, config.model_name_or_path,
                               line_of_row)


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


def reward_columns(reward_funcs) -> dict[str, list[str]]:
    """{column: names of the reward functions that take it} (`required_columns` of each)."""
    out: dict[str, list[str]] = {}
    for fn in reward_funcs:
        for column in required_columns(fn):
            name = getattr(fn, "__name__", type(fn).__name__)
            if name not in out.setdefault(column, []):
                out[column].append(name)
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


def prompt_order(n: int, epoch: int, seed: int, curriculum: bool):
    """Index order of one epoch: a seeded permutation, or the dataset order (curriculum)."""
    import numpy as np  # here, not at import: the CLI's pre-load checks import this module

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
