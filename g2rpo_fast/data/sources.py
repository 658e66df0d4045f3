"""The data sets of a run, from its config: which source a name means, loading a split, the
held-out rows (if any), the checks of every row before the model loads, and the deterministic
prompt order.

Every name goes through `loading.load_prompts`: the built-in task (`is_embedded`), hub names,
local json/jsonl/parquet/csv files (gzip-compressed too) and directories of them. The training
set comes from `dataset_name`; the held-out rows from `eval_dataset_name`, else from the
training source's held-out split (`held_out`): nothing is ever borrowed from the built-in task
for a data set of the user's.
"""
from __future__ import annotations

import inspect
import os
import warnings

from g2rpo_fast.data.loading import (
    HELD_OUT_SPLITS,
    hub_offline,
    is_embedded,
    load_prompts,
    local_split_files,
    looks_like_local_path,
)
from g2rpo_fast.data.validation import (
    is_json_lines,
    local_data_files,
    validate_jsonl_file,
    validate_prompts_for_model,
    validate_rows,
)


def needs_solutions(config, train: bool) -> bool:
    return train and config.n_guided > 0


def check_dataset_source(config, name=None, field: str = "dataset_name", train: bool = True,
                         required: dict | None = None) -> None:
    """Before anything heavy loads: a local dataset exists and its JSON-lines files are
    well formed row by row (streamed; `required`: `reward_columns`); a hub name is checked
    when it loads."""
    name = config.dataset_name if name is None and field == "dataset_name" else name
    if name is None or is_embedded(name):
        return
    if os.path.exists(name):
        files = local_data_files(name)
        if not files:
            raise ValueError(f"`{field}`: no json/jsonl/parquet/csv files in {name}")
        guidance = config.guidance_field if needs_solutions(config, train) else None
        for path in files:
            if is_json_lines(path):
                validate_jsonl_file(path, config.prompt_field, guidance, required, field=field)
        return
    if looks_like_local_path(name):
        raise ValueError(f"`{field}`: no such file or directory: {name}")


def load_split(config, split: str, train: bool, name=None, field: str = "dataset_name", required: dict | None = None):
    """The split of `name` (default: `dataset_name`) as a `datasets.Dataset` (a local JSON-lines
    file checked row by row first)."""
    name = config.dataset_name if name is None else name
    if is_embedded(name):  # the built-in task: its sizes and levels come from the config
        return load_prompts(name, split="train" if train else "eval", required=(),
                            num_examples=config.embedded_train_size if train else config.embedded_eval_size,
                            seed=config.seed if train else 0, difficulties=list(config.embedded_difficulties))
    check_dataset_source(config, name, field, train, required)
    # Hub names and local json/jsonl/parquet/csv files; GSM8K / MATH columns are normalised.
    try:
        return load_prompts(name, split=split, config=config.dataset_config, required=())
    except Exception as exc:  # datasets / pyarrow / hub errors: the user's data or name
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        hint = ""
        if not os.path.exists(name) and hub_offline():
            hint = "; the hub is off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): only cached datasets load"
        raise ValueError(f"`{field}`: cannot load {name!r} (split {split!r}): {type(exc).__name__}: "
                         f"{detail}{hint}") from None


def source_splits(name, dataset_config=None) -> list[str] | None:
    """The splits a source has (None: unknown, e.g. a hub name that cannot be asked offline)."""
    if is_embedded(name):
        return ["train", "eval"]
    if os.path.exists(name):
        return sorted(local_split_files(name))
    try:
        import datasets

        return list(datasets.get_dataset_split_names(name, dataset_config))
    except Exception:  # no network, no cache, a script dataset: try the named split when it loads
        return None


def held_out(config, train_given: bool):
    """`(name, split)` of the run's held-out rows, or None when it has none.

    `eval_dataset_name` first (a single file whole, else its `eval_split`, else its held-out split);
    else, when the training rows come from `dataset_name`, that source's `eval_split` (it must
    exist) or, with `eval_split` None, its first split among test / validation / eval other than
    the training split. A `train_dataset` object has no held-out split."""
    if config.eval_dataset_name is not None:
        name = config.eval_dataset_name
        splits = source_splits(name, config.dataset_config)
        if splits is not None and len(splits) == 1:
            return name, splits[0]  # a file, or a directory of one split: all of it
        if config.eval_split is not None:
            return name, _existing(name, config.eval_split, splits, "eval_split")
        found = _first_held_out(splits, exclude=None)
        if found is None:
            raise ValueError(f"`eval_split`: {name} has the splits {splits}; name the one to evaluate on")
        return name, found
    if train_given:
        return None
    name = "embedded" if config.dataset_name is None else config.dataset_name
    splits = source_splits(name, config.dataset_config)
    if config.eval_split is not None:
        if is_embedded(name) and config.eval_split in ("eval", "test", "validation"):
            return name, "eval"
        return name, _existing(name, config.eval_split, splits, "eval_split")
    found = _first_held_out(splits, exclude=config.dataset_split)
    return None if found is None else (name, found)


def _first_held_out(splits, exclude) -> str | None:
    if splits is None:
        return None
    return next((s for s in HELD_OUT_SPLITS if s in splits and s != exclude), None)


def _existing(name, split: str, splits, field: str) -> str:
    if splits is not None and split not in splits:
        what = "the built-in task" if is_embedded(name) else name
        hint = "; give the held-out rows as eval_dataset_name (or eval_dataset)" if len(splits) == 1 else ""
        raise ValueError(f"`{field}`: {what} has no split {split!r} (its splits: {splits}){hint}")
    return split


def warn_if_training_rows(config, train_dataset, eval_dataset, eval_source) -> None:
    """Evaluating on the training rows measures nothing held out: say so."""
    same = eval_dataset is not None and eval_dataset is train_dataset
    if eval_source is not None and train_dataset is not None and not same:
        name, split = eval_source
        train_name = "embedded" if config.dataset_name is None else config.dataset_name
        same = _same_source(name, train_name) and (split == config.dataset_split or _single_split(name))
    if same:
        warnings.warn("the evaluation set is the training set: held-out accuracy will be measured on the rows "
                      "trained on (give eval_dataset / eval_dataset_name, or a data set with a held-out split)",
                      RuntimeWarning, stacklevel=3)


def _same_source(a, b) -> bool:
    if is_embedded(a) or is_embedded(b):
        return is_embedded(a) and is_embedded(b)
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return a == b


def _single_split(name) -> bool:
    return os.path.exists(name) and len(local_split_files(name)) == 1


def dataset_source(config, split: str, name=None, train: bool = True, required: dict | None = None):
    """How messages name the data set, and the line of each row for a single JSON-lines file."""
    name = config.dataset_name if name is None else name
    if isinstance(name, str) and os.path.isfile(name) and is_json_lines(name):
        guidance = config.guidance_field if needs_solutions(config, train) else None
        return name, validate_jsonl_file(name, config.prompt_field, guidance, required)
    if isinstance(name, str) and os.path.exists(name):
        return name, None
    return f"{'the built-in task' if is_embedded(name) else name} (split {split})", None


def validate_dataset(dataset, config, split: str, train: bool, source: str | None = None, name=None,
                     required: dict | None = None) -> None:
    """Every row's prompt (and reference solution when guided, and the columns the reward
    functions take: `required`) before the model loads."""
    line_of_row = None
    if source is None:
        source, line_of_row = dataset_source(config, split, name, train, required)
    guidance = config.guidance_field if needs_solutions(config, train) else None
    validate_rows(dataset, config.prompt_field, guidance, source, line_of_row, required)


def validate_dataset_for_model(dataset, config, tokenizer, context_length, split: str, source=None, name=None,
                               model_name=None) -> None:
    line_of_row = None
    if source is None:
        source, line_of_row = dataset_source(config, split, name)
    validate_prompts_for_model(dataset, config, tokenizer, context_length, source,
                               model_name or config.model_name_or_path or "the built-in model", line_of_row)


# What the trainer gives a reward function besides the data set's columns (TRL's keywords)
REWARD_KEYWORDS = ("prompts", "completions", "completion_ids", "trainer_state")


def required_columns(fn) -> list[str]:
    """Dataset columns a TRL-style reward function needs: its named parameters without a
    default, other than TRL's own keywords (prompts, completions, completion_ids, trainer_state)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not any(p.name in REWARD_KEYWORDS for p in named):
        named = named[2:]  # fn(p, c, ...): the first two are the prompts and completions, by position
    return [p.name for p in named if p.default is p.empty and p.name not in REWARD_KEYWORDS]


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
                         f"guided roll-outs (columns: {sorted(cols)}); set guidance_field to the column with the "
                         f"reference solutions, or guidance_schedule=none / guidance_ratio=0 to train without "
                         f"guidance")
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
