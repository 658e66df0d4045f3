"""A CLI run that ends early: a reward that raises KeyboardInterrupt (Ctrl-C's exception), or
one that ends the process with `os._exit(0)`; and the final record that only a run that
reached its end writes (`train_results.json`). Subprocesses (`python -m g2rpo_fast.cli`), as a
user runs it; the misbehaving rewards are in `helpers.py`."""
import json
import os

from test_cli_errors import run_cli, train_args

from g2rpo_fast.checkpointing.manifest import verify_checkpoint


def steps_logged(out) -> list[int]:
    with open(out / "metrics.jsonl") as fh:
        return [json.loads(line)["step"] for line in fh if line.strip()]


def test_keyboard_interrupt_from_a_reward_stops_cleanly_with_status_130(tmp_path, tiny_local_assets):
    """Like Ctrl-C: status 130, one line (no traceback) naming the last complete checkpoint,
    which is kept; no final record (the resume of such a run: the os._exit case below)."""
    out = tmp_path / "run"
    proc = run_cli(train_args(tiny_local_assets, out, "--reward-funcs", "[helpers:interrupting_reward, accuracy]",
                              "--max-steps", "3", "--save-steps", "1"))
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f"g2rpo-fast train: interrupted at step 1 (Ctrl-C or KeyboardInterrupt); {out}/checkpoint-1 is "
                    f"the last complete checkpoint (--resume continues from it)"), last
    assert "interrupting_reward: KeyboardInterrupt" in proc.stderr  # the reward boundary said where it came from
    assert verify_checkpoint(str(out / "checkpoint-1")) is None
    assert steps_logged(out) == [1] and not (out / "train_results.json").exists()


def test_a_run_ended_by_os_exit_is_never_reported_complete(tmp_path, tiny_local_assets):
    """`os._exit(0)` in a reward ends the process with status 0 and no output: nothing in the
    process can catch it. The run is still never taken for a complete one: it wrote no final
    record, and --resume says that the last run ended early. A run that reaches its end writes
    the record, and a resume that extends it does not call it an early end."""
    out = tmp_path / "run"
    proc = run_cli(train_args(tiny_local_assets, out, "--reward-funcs", "[helpers:exiting_reward, accuracy]",
                              "--max-steps", "3", "--save-steps", "1"))
    assert proc.returncode == 0 and "done:" not in proc.stdout  # what os._exit(0) leaves: no word
    assert steps_logged(out) == [1] and (out / "checkpoint-1").is_dir()
    assert not (out / "train_results.json").exists()

    resumed = run_cli(train_args(tiny_local_assets, out, "--max-steps", "3", "--save-steps", "1", "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    notice = [x for x in resumed.stderr.splitlines() if "ended early" in x]
    assert notice == [f"g2rpo-fast: warning: resume: the last run in {out} ended early after step 1: it wrote no "
                      f"train_results.json, the record of a run that reached its end (it was stopped, killed, or its "
                      f"process exited); continuing from checkpoint-1"], resumed.stderr[-3000:]
    record = json.loads((out / "train_results.json").read_text())
    assert record["complete"] is True and record["step"] == record["max_steps"] == 3
    assert steps_logged(out) == [1, 2, 3]

    extended = run_cli(train_args(tiny_local_assets, out, "--max-steps", "4", "--resume"))
    assert extended.returncode == 0 and "ended early" not in extended.stderr, extended.stderr[-3000:]
    assert json.loads((out / "train_results.json").read_text())["step"] == 4
    assert os.path.isdir(out / "checkpoint-4")
