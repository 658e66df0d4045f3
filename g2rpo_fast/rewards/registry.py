"""Reward lookup by name and a call wrapper that never lets a reward crash training."""
from __future__ import annotations

import importlib
import logging
import math
import os
import sys
import threading
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
            module = import_from_working_directory(module_name)
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


def import_from_working_directory(module_name: str):
    """`importlib.import_module`, finding modules in the working directory as `python -m` and
    `python -c` do (a console script such as `g2rpo-fast` starts with its own folder on sys.path
    instead): the working directory goes to the front of sys.path, for good, as Python puts it."""
    cwd = os.getcwd()
    if not any(os.path.abspath(p or ".") == cwd for p in sys.path):
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()
    return importlib.import_module(module_name)


def func_name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


# Every reward is clipped to this range: a reward of 1e308 would overflow the float32
# rewards and advantages (and a weighted sum of such rewards even float64) into inf.
REWARD_LIMIT = 1e6
# After a failed batch call, samples are retried one by one to isolate the failing ones; when
# this many retries in a row fail too, the function is failing on every input and the
# remaining samples score 0 without being called (at most n + 1 calls, usually 1 + this).
MAX_FAILED_RETRIES = 3


def weighted_total(values, weights, limit: float = REWARD_LIMIT) -> float:
    """sum(w * v) clipped to [-limit, limit]; each term is clipped first, so no weight or
    reward (both finite) can overflow the sum to inf or make inf - inf."""
    terms = [min(max(w * v, -limit), limit) for w, v in zip(weights, values)]
    return min(max(math.fsum(terms), -limit), limit)


def _report(errors: list[str], message: str) -> None:
    errors.append(message)
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _clean(value, name: str, index: int, errors: list[str]) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError, OverflowError):
        _report(errors, f"reward {name}: sample {index} returned {value!r}; scored 0.0")
        return 0.0
    if not math.isfinite(value):
        _report(errors, f"reward {name}: sample {index} returned {value}; scored 0.0")
        return 0.0
    if abs(value) > REWARD_LIMIT:
        clipped = math.copysign(REWARD_LIMIT, value)
        _report(errors, f"reward {name}: sample {index} returned {value:g}, outside [-{REWARD_LIMIT:g}, "
                        f"{REWARD_LIMIT:g}]; clipped to {clipped:g}")
        return clipped
    return value


def _slice_columns(columns: dict, i: int, n: int) -> dict:
    # Per-sample columns are lists of length n; anything else is passed through.
    return {k: ([v[i]] if isinstance(v, (list, tuple)) and len(v) == n else v) for k, v in columns.items()}


class RewardTimeout(Exception):
    pass


def _call(fn, timeout, /, *args, **kwargs):
    """`fn(*args, **kwargs)` within `timeout` seconds (None: no limit).

    A function run in a worker process (`reward_isolation: process`, `worker.py`) gets the
    limit handed over: the worker is killed when it overruns. In-process, a function that
    bounds its own time per sample (`limits_itself`: the built-in accuracy, code and format
    rewards; math-verify's per-answer timeout needs the main thread) is called directly; any
    other runs in a daemon worker thread. A thread, not a process: reward functions are often
    closures or hold unpicklable state. Python cannot stop a thread, so a call that times out
    is abandoned: it keeps running in the background until it returns (a reward stuck for
    good keeps one idle thread per timed-out call; a daemon thread never blocks the exit)."""
    in_worker = getattr(fn, "call_with_timeout", None)
    if in_worker is not None:
        return in_worker(timeout, *args, **kwargs)
    if timeout is None or getattr(fn, "limits_itself", False):
        return call_as_trl(fn, *args, **kwargs)
    box: dict = {}

    def run():
        try:
            box["value"] = call_as_trl(fn, *args, **kwargs)
        except BaseException as exc:
            box["error"] = exc

    worker = threading.Thread(target=run, name=f"reward-{func_name(fn)}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise RewardTimeout(f"no result after {timeout:g} s (reward_timeout)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def call_as_trl(fn, prompts, completions, **columns):
    """`fn` called as TRL calls a reward function, `prompts=` and `completions=` by keyword (so
    `fn(completions, **kwargs)` works, as in TRL); a function that names neither gets them by
    position, `fn(p, c, **columns)`, as this package always did."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(prompts=prompts, completions=completions, **columns)
    named = {k for k in ("prompts", "completions") if k in params and params[k].kind is not params[k].POSITIONAL_ONLY}
    if not named:
        return fn(prompts, completions, **columns)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    given = {"prompts": prompts, "completions": completions}
    return fn(**{k: v for k, v in given.items() if k in named or takes_any}, **columns)


def _failure(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    if type(exc).__name__ == "RewardWorkerError":  # its message already says what happened
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# Keywords TRL gives every reward function besides the data set's columns.
TRL_REWARD_KEYWORDS = ("prompts", "completions", "completion_ids", "trainer_state")


def accepted_keywords(fn, columns: dict) -> dict:
    """The keyword arguments `fn` takes: all of them with `**kwargs` (TRL's convention); else the
    ones it names (a function written without `**kwargs` is not handed what it cannot take)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return columns
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return columns
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in columns.items() if k in names}


def _interrupted(errors: list[str], name: str) -> None:
    _report(errors, f"reward {name}: KeyboardInterrupt (raised by the function, or Ctrl-C during the call): the "
                    f"run stops as on Ctrl-C")


def safe_reward_call(fn, prompts, completions, reward_timeout: float | None = None,
                     **columns) -> tuple[list[float], list[str]]:
    """Call ``fn`` as TRL does, by keyword: ``fn(prompts=..., completions=..., **columns)`` (the
    columns include ``completion_ids`` and ``trainer_state`` when the trainer calls); never raises
    (``KeyboardInterrupt`` excepted: it is reported and re-raised, so that the run stops as on Ctrl-C).

    - a call that raises, or calls ``sys.exit``, is reported; a failed batch call is then
      retried sample by sample to isolate the culprits (up to n more calls; after
      ``MAX_FAILED_RETRIES`` failures in a row the remaining samples score 0 uncalled);
    - ``reward_timeout`` (seconds, None: no limit): a call that takes longer scores 0 for all its
      samples, with one warning, and is not retried (see ``_call`` for how it is enforced);
    - a failing sample, None, NaN, inf or a non-number scores 0.0; a reward outside
      ``[-REWARD_LIMIT, REWARD_LIMIT]`` is clipped to it.
    Returns (rewards, error messages); errors are also logged and warned with the function's name.
    """
    name = func_name(fn)
    n = len(completions)
    errors: list[str] = []
    columns = accepted_keywords(fn, {"prompts": prompts, "completions": completions, **columns})
    prompts, completions = columns.pop("prompts", prompts), columns.pop("completions", completions)
    try:
        values = list(_call(fn, reward_timeout, prompts, completions, **columns))
        if len(values) != n:
            raise ValueError(f"returned {len(values)} rewards for {n} completions")
    except RewardTimeout as exc:
        _report(errors, f"reward {name}: {exc}; its {n} samples scored 0.0")
        return [0.0] * n, errors
    except KeyboardInterrupt:
        _interrupted(errors, name)
        raise
    except (Exception, SystemExit) as exc:
        _report(errors, f"reward {name}: batch call failed ({_failure(exc)}); retrying per sample")
        values = _retry_per_sample(fn, name, prompts, completions, columns, reward_timeout, errors)
    return [_clean(v, name, i, errors) for i, v in enumerate(values)], errors


def _retry_per_sample(fn, name, prompts, completions, columns, timeout, errors) -> list:
    n = len(completions)
    values: list = []
    failures_in_a_row = 0
    for i in range(n):
        if failures_in_a_row >= MAX_FAILED_RETRIES:
            _report(errors, f"reward {name}: {MAX_FAILED_RETRIES} samples in a row failed one by one too; "
                            f"samples {i}..{n - 1} scored 0.0 without calling it")
            return values + [0.0] * (n - i)
        prompt_i = [prompts[i]] if isinstance(prompts, (list, tuple)) and len(prompts) == n else prompts
        try:
            out = list(_call(fn, timeout, prompt_i, [completions[i]], **_slice_columns(columns, i, n)))
        except RewardTimeout as exc:
            _report(errors, f"reward {name}: sample {i}: {exc}; samples {i}..{n - 1} scored 0.0")
            return values + [0.0] * (n - i)
        except KeyboardInterrupt:
            _interrupted(errors, name)
            raise
        except (Exception, SystemExit) as exc:
            _report(errors, f"reward {name}: sample {i} failed ({_failure(exc)}); scored 0.0")
            values.append(0.0)
            failures_in_a_row += 1
            continue
        failures_in_a_row = 0
        if len(out) != 1:
            _report(errors, f"reward {name}: sample {i} returned {len(out)} values; scored 0.0")
            values.append(0.0)
        else:
            values.append(out[0])
    return values
