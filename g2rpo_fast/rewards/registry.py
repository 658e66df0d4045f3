"""Reward lookup by name and a call wrapper that never lets a reward crash training."""
from __future__ import annotations

import importlib
import logging
import math
import warnings
from collections.abc import Callable

from .accuracy import accuracy_reward
from .code import code_reward
from .format import format_reward

logger = logging.getLogger(__name__)

REWARD_FUNCS: dict[str, Callable] = {
    "accuracy": accuracy_reward,
    "accuracy_reward": accuracy_reward,
    "math": accuracy_reward,
    "code": code_reward,
    "code_reward": code_reward,
    "format": format_reward,
    "format_reward": format_reward,
}


def get_reward_func(name_or_callable) -> Callable:
    """A callable as is; a built-in name (see ``REWARD_FUNCS``); or ``"module:function"``."""
    if callable(name_or_callable):
        return name_or_callable
    if not isinstance(name_or_callable, str):
        raise ValueError(f"reward function: expected a name or a callable, got {type(name_or_callable).__name__}")
    name = name_or_callable.strip()
    if name in REWARD_FUNCS:
        return REWARD_FUNCS[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"reward function {name!r}: cannot import module {module_name!r}: {exc}") from exc
        fn = module
        for part in attr.split("."):
            fn = getattr(fn, part, None)
        if fn is None or not callable(fn):
            raise ValueError(f"reward function {name!r}: {module_name!r} has no callable {attr!r}")
        return fn
    raise ValueError(f"unknown reward function {name!r}; built-ins: {sorted(REWARD_FUNCS)}, "
                     "or give 'module:function'")


def _func_name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _report(errors: list[str], message: str) -> None:
    errors.append(message)
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _clean(value, name: str, index: int, errors: list[str]) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        _report(errors, f"reward {name}: sample {index} returned {value!r}; scored 0.0")
        return 0.0
    if not math.isfinite(value):
        _report(errors, f"reward {name}: sample {index} returned {value}; scored 0.0")
        return 0.0
    return value


def _slice_columns(columns: dict, i: int, n: int) -> dict:
    # Per-sample columns are lists of length n; anything else is passed through.
    return {k: ([v[i]] if isinstance(v, (list, tuple)) and len(v) == n else v) for k, v in columns.items()}


def safe_reward_call(fn, prompts, completions, **columns) -> tuple[list[float], list[str]]:
    """Call ``fn`` with the TRL signature; never raises. A batch-level exception is
    retried sample by sample to isolate the culprit; a failing sample, None, NaN, inf or
    a non-number scores 0.0. Returns (rewards, error messages); errors are also logged
    and warned with the function's name."""
    name = _func_name(fn)
    n = len(completions)
    errors: list[str] = []
    try:
        values = list(fn(prompts, completions, **columns))
        if len(values) != n:
            raise ValueError(f"returned {len(values)} rewards for {n} completions")
    except Exception as exc:
        _report(errors, f"reward {name}: batch call failed ({type(exc).__name__}: {exc}); retrying per sample")
        values = []
        for i in range(n):
            prompt_i = [prompts[i]] if isinstance(prompts, (list, tuple)) and len(prompts) == n else prompts
            try:
                out = list(fn(prompt_i, [completions[i]], **_slice_columns(columns, i, n)))
                values.append(out[0] if len(out) == 1 else None)
                if len(out) != 1:
                    _report(errors, f"reward {name}: sample {i} returned {len(out)} values; scored 0.0")
                    values[-1] = 0.0
            except Exception as sample_exc:
                _report(errors, f"reward {name}: sample {i} raised "
                                f"{type(sample_exc).__name__}: {sample_exc}; scored 0.0")
                values.append(0.0)
    return [_clean(v, name, i, errors) for i, v in enumerate(values)], errors
