"""Load prompt datasets: the built-in task, a hub dataset, or a local json/jsonl/parquet/csv file.

Every loader returns a ``datasets.Dataset`` with at least ``prompt``, ``solution`` (the
worked reference solution: the guidance source) and ``answer`` columns when the source has a
known layout (GSM8K: question/answer with ``#### x``; MATH-500: problem/solution/answer).
"""
from __future__ import annotations

import os
import re

# The built-in task and the built-in model warm-started on it (`models/warmstart.py`) answer to
# the same names, wherever a dataset or a model is named; None (the default) means them too.
EMBEDDED_NAME = "g2rpo-fast/tiny-arith"
EMBEDDED_NAMES = frozenset({"embedded", EMBEDDED_NAME, "arithmetic"})
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
# Compressed text files that `datasets` reads as they are (it picks the codec by suffix).
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
# The split names a local directory's files are sorted into by their names (train.jsonl, test.parquet, ...);
# the held-out ones, in the order an evaluation looks for them.
HELD_OUT_SPLITS = ("test", "validation", "eval")
SPLIT_NAMES = ("train", *HELD_OUT_SPLITS)
REQUIRED_COLUMNS = ("prompt", "solution", "answer")

_GSM8K_CALC = re.compile(r"<<[^<>]*>>")


def validate_columns(dataset, required) -> None:
    """Raise ``ValueError`` naming every column of ``required`` that ``dataset`` lacks."""
    present = list(dataset.column_names)
    missing = [c for c in required if c not in present]
    if missing:
        raise ValueError(
            f"dataset is missing column(s) {missing} (has {present}); map your columns to "
            f"{list(required)} or pass a normaliser"
        )


def split_gsm8k_answer(text: str) -> tuple[str, str]:
    """GSM8K ``answer`` text -> (worked solution, final answer without commas)."""
    if "####" not in text:
        raise ValueError(f"GSM8K answer has no '####' marker: {text[:80]!r}")
    final = text.rsplit("####", 1)[1].strip().replace(",", "")
    return text.strip(), final


def normalize_gsm8k(example: dict, strip_calculator: bool = True) -> dict:
    """question/answer -> prompt/solution/answer; ``<<48/2=24>>`` calculator notes removed.

    The solution keeps its ``#### x`` last line, the same answer format as the built-in task.
    """
    solution, final = split_gsm8k_answer(example["answer"])
    if strip_calculator:
        solution = _GSM8K_CALC.sub("", solution)
    return {"prompt": example["question"], "solution": solution, "answer": final}


def normalize_math500(example: dict) -> dict:
    """problem/solution/answer -> prompt/solution/answer; ``level`` (if any) -> ``difficulty``."""
    out = {"prompt": example["problem"], "solution": example["solution"], "answer": str(example["answer"])}
    if "level" in example and example["level"] is not None:
        digits = re.findall(r"\d+", str(example["level"]))
        out["difficulty"] = int(digits[0]) if digits else -1
    return out


def detect_format(column_names) -> str:
    """``"g2rpo"`` (already prompt/solution/answer), ``"gsm8k"``, ``"math500"`` or ``"unknown"``."""
    cols = set(column_names)
    if set(REQUIRED_COLUMNS) <= cols:
        return "g2rpo"
    if {"question", "answer"} <= cols:
        return "gsm8k"
    if {"problem", "solution", "answer"} <= cols:
        return "math500"
    return "unknown"


def normalize_columns(dataset, fmt: str = "auto"):
    """Map a known layout onto prompt/solution/answer (other columns are kept)."""
    fmt = detect_format(dataset.column_names) if fmt == "auto" else fmt
    if fmt in ("g2rpo", "unknown"):
        return dataset
    if fmt == "gsm8k":
        # "answer" is rewritten in place; "question" is consumed.
        return dataset.map(normalize_gsm8k, remove_columns=["question"])
    if fmt == "math500":
        return dataset.map(normalize_math500, remove_columns=["problem"])
    raise ValueError(f"fmt must be 'auto', 'g2rpo', 'gsm8k' or 'math500', got {fmt!r}")


def data_format(path: str) -> str | None:
    """`datasets`' builder for a data file ("json", "parquet", "csv"), compressed text included
    (`data.jsonl.gz`); None for anything else."""
    low = path.lower()
    for suffix in COMPRESSIONS:
        if low.endswith(suffix):
            low = low[:-len(suffix)]
            break
    fmt = LOCAL_FORMATS.get(os.path.splitext(low)[1])
    return None if fmt == "parquet" and low != path.lower() else fmt  # parquet compresses itself


def local_split_files(path: str) -> dict[str, list[str]]:
    """split -> data files of a local source: a file is one split, "train"; a directory's files go
    to the split their name starts with (train*, test*, validation*, eval*), the others to "train"."""
    if not os.path.isdir(path):
        return {"train": [path]}
    splits: dict[str, list[str]] = {}
    for f in sorted(os.listdir(path)):
        if data_format(f) is None:
            continue
        split = next((s for s in SPLIT_NAMES if f.lower().startswith(s)), "train")
        splits.setdefault(split, []).append(os.path.join(path, f))
    return splits


def looks_like_local_path(name: str) -> bool:
    """A name meant as a local path rather than a hub id (`org/name` or `name`): an explicit
    directory prefix, more than one `/`, a backslash, or a data-file extension."""
    return (name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or "\\" in name
            or data_format(name) is not None)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE / TRANSFORMERS_OFFLINE set: nothing can be downloaded."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def is_embedded(name) -> bool:
    """True for the built-in task / model: None, "embedded", "g2rpo-fast/tiny-arith", "arithmetic"."""
    return name is None or (isinstance(name, str) and name.strip() in EMBEDDED_NAMES)


def load_prompts(
    dataset_name_or_path="embedded",
    split: str = "train",
    config: str | None = None,
    num_examples: int | None = None,
    seed: int = 0,
    fmt: str = "auto",
    required=REQUIRED_COLUMNS,
    difficulties=None,
):
    """Load and normalise a prompt dataset.

    - ``"embedded"`` (default): the built-in addition task; ``split`` "train" or "eval"/"test"
      (disjoint problems); ``num_examples`` defaults to 2000 (train) / 200 (eval).
    - a path to a ``.json``/``.jsonl``/``.parquet``/``.csv`` file (``.gz``, ``.bz2``, ``.xz``,
      ``.zst`` compressed text too) or a directory of them: loaded with
      ``datasets.load_dataset(<format>, data_files=...)``; a single file is the split "train",
      a directory's files go to the split their names start with (`local_split_files`).
    - anything else: a hub dataset, ``datasets.load_dataset(name, config, split=split)``.

    ``num_examples`` keeps the first n rows. ``required`` columns are validated after
    normalisation (pass ``()`` to skip).
    """
    import datasets

    if is_embedded(dataset_name_or_path):
        from g2rpo_fast.data.arithmetic import make_dataset

        arith_split = "eval" if split in ("eval", "test", "validation") else "train"
        if split not in ("train", "eval", "test", "validation"):
            raise ValueError(f"split must be train/eval/test/validation for the embedded task, got {split!r}")
        n = num_examples if num_examples is not None else (2000 if arith_split == "train" else 200)
        kwargs = {} if difficulties is None else {"difficulties": difficulties}
        return make_dataset(n, seed=seed, split=arith_split, **kwargs)

    name = os.fspath(dataset_name_or_path)
    if os.path.exists(name):
        ds = _load_local(name, split)
    else:
        ds = datasets.load_dataset(name, config, split=split)
    ds = normalize_columns(ds, fmt)
    if num_examples is not None:
        ds = ds.select(range(min(num_examples, len(ds))))
    if required:
        validate_columns(ds, required)
    return ds


def _load_local(path: str, split: str):
    import datasets

    splits = local_split_files(path)
    if not splits:
        raise ValueError(f"dataset_name_or_path: no json/jsonl/parquet/csv files in {path!r}")
    if split not in splits:
        raise ValueError(f"dataset_name_or_path: {path!r} has no split {split!r} (its splits: {sorted(splits)})")
    files = splits[split]
    kinds = {data_format(f) for f in files}
    if None in kinds:
        raise ValueError(f"dataset_name_or_path: expected .json/.jsonl/.parquet/.csv file(s) (.gz, .bz2, .xz, .zst "
                         f"compressed text too), got {files!r}")
    if len(kinds) != 1:
        raise ValueError(f"dataset_name_or_path: the {split!r} files of {path!r} mix formats: {files!r}")
    return datasets.load_dataset(kinds.pop(), data_files=files, split="train")
