"""The output directory of a run: checked before anything loads, prepared before step 1.

A directory is *used* when it holds `metrics.jsonl` or a `checkpoint-N` directory: the
marks of an earlier run that a new one would mix with (overwritten metrics, replaced or
pruned checkpoints, a later `--resume` loading the wrong run). Other files (notes, a config,
plots) do not count. A fresh run refuses a used directory unless it resumes (`--resume`)
or `overwrite_output_dir` is set, which deletes the earlier run's metrics, checkpoints,
evaluation results and plots first.

A run that reaches its end writes `train_results.json` (the final record: steps, run time,
final evaluation) as its very last act, and every run removes an earlier one before step 1:
its absence says that the run in the directory ended early (stopped, killed, or a reward that
called `os._exit`), whatever its exit status was, and `--resume` says so.

Light on purpose (standard library only): the CLI calls `check_output_dir` before torch,
the data or the model are imported.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

from .checkpoint import TMP_PREFIX
from .manifest import CHECKPOINT_NAME

METRICS_FILE = "metrics.jsonl"
FINAL_RECORD = "train_results.json"  # Hugging Face's name for what a finished run reports
# What `train` writes besides checkpoints; `overwrite_output_dir` deletes these.
RUN_FILES = (METRICS_FILE, "eval_results.json", "config.json", "training_curves.png", FINAL_RECORD,
             "completions.jsonl")


class RunSetupError(ValueError):
    """The output directory or the checkpoint to resume cannot be used (a user mistake:
    the CLI reports it with status 2)."""


def used_by_earlier_run(output_dir: str) -> list[str]:
    """The entries of `output_dir` that mark an earlier run (empty: not used)."""
    if not os.path.isdir(output_dir):
        return []
    names = sorted(os.listdir(output_dir))
    marks = [n for n in names if n == METRICS_FILE]
    marks += [n for n in names if CHECKPOINT_NAME.match(n) and os.path.isdir(os.path.join(output_dir, n))]
    return marks


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_output_dir(output_dir: str, resume: bool = False, overwrite: bool = False) -> None:
    """Raise `RunSetupError` naming `output_dir` when a run cannot write there or would mix
    with an earlier one. Writes nothing (a probe file is created and removed)."""
    if not isinstance(output_dir, str) or not output_dir.strip():
        raise RunSetupError(f"`output_dir` must be a non-empty path, got {output_dir!r}")
    if resume and overwrite:
        raise RunSetupError("`overwrite_output_dir` and `--resume` exclude each other: resume continues the "
                            "run in output_dir, overwrite deletes it")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise RunSetupError(f"`output_dir`: {output_dir} is a file, not a directory")
    existing = _nearest_existing(output_dir)
    if not os.path.isdir(existing):
        raise RunSetupError(f"`output_dir`: cannot create {output_dir}: {existing} is a file")
    try:  # os.access says yes to root even on a read-only mount: try it
        fd, probe = tempfile.mkstemp(prefix=".g2rpo-write-probe-", dir=existing)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        where = "" if existing == os.path.abspath(output_dir) else f" (its nearest existing parent {existing})"
        raise RunSetupError(f"`output_dir`: {output_dir}{where} is not writable: {exc.strerror or exc}") from None
    marks = used_by_earlier_run(output_dir)
    if marks and not (resume or overwrite):
        shown = ", ".join(marks[:4]) + (", ..." if len(marks) > 4 else "")
        raise RunSetupError(f"`output_dir`: {output_dir} already holds a run ({shown}); pass --resume to "
                            f"continue it, --overwrite-output-dir to replace it, or choose another --output-dir")


def delete_earlier_run(output_dir: str) -> list[str]:
    """`overwrite_output_dir`: remove what an earlier run wrote (metrics, checkpoints,
    leftovers of interrupted saves, evaluation results, plots). Returns the names removed."""
    removed = []
    for name in sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []:
        path = os.path.join(output_dir, name)
        if (CHECKPOINT_NAME.match(name) or name.startswith(TMP_PREFIX)) and os.path.isdir(path):
            shutil.rmtree(path)
            removed.append(name)
        elif name == "runs" and os.path.isdir(path):  # TensorBoard events (report_to)
            shutil.rmtree(path)
            removed.append(name)
        elif name in RUN_FILES and os.path.isfile(path):
            os.remove(path)
            removed.append(name)
    return removed


# ---------------------------------------------------------------------------- the final record
def write_final_record(output_dir: str, record: dict) -> None:
    """`train_results.json`, atomically (a kill mid-write leaves no record, never a torn one)."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-train-results-", dir=output_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"complete": True, **record}, fh, indent=2)
    os.replace(tmp, os.path.join(output_dir, FINAL_RECORD))


def take_final_record(output_dir: str) -> dict | None:
    """Remove the earlier run's final record before this run's step 1 (an unreadable one counts
    as absent); returns what it held, None when there was none."""
    path = os.path.join(output_dir, FINAL_RECORD)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        record = None
    os.remove(path)
    return record if isinstance(record, dict) and record.get("complete") is True else None


def ended_early_notice(output_dir: str, last_logged_step: int | None, checkpoint: str) -> str:
    where = f" after step {last_logged_step}" if last_logged_step else ""
    return (f"resume: the last run in {output_dir} ended early{where}: it wrote no {FINAL_RECORD}, the record of a "
            f"run that reached its end (it was stopped, killed, or its process exited); continuing from "
            f"{os.path.basename(checkpoint)}")
