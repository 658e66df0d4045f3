"""Prompt datasets: the built-in addition task and loaders for hub / local files."""
from g2rpo_fast.data.arithmetic import make_dataset, make_splits
from g2rpo_fast.data.loading import (
    load_prompts,
    normalize_columns,
    normalize_gsm8k,
    normalize_math500,
    validate_columns,
)

__all__ = [
    "load_prompts",
    "make_dataset",
    "make_splits",
    "normalize_columns",
    "normalize_gsm8k",
    "normalize_math500",
    "validate_columns",
]
