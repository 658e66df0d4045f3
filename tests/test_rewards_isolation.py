"""`reward_isolation: process` (`g2rpo_fast/rewards/worker.py`): user reward functions in a
worker process that can die, crash or hang without taking the trainer with it.

Each misbehaving reward would end or stall the trainer's own process in-process (`os._exit`,
a segfault), or leave a thread running for good (a hang); here it scores 0, is reported, and
the next call gets a fresh worker. The functions live in `helpers.py` so that the worker
(spawned: a fresh interpreter) imports them by name."""
import os
import warnings

import helpers
import pytest
from helpers import make_config, make_trainer, read_metrics

from g2rpo_fast.rewards import accuracy_reward, format_reward
from g2rpo_fast.rewards.registry import safe_reward_call
from g2rpo_fast.rewards.scoring import RewardScorer

PROMPTS = ["p"] * 3
COMPLETIONS = [r"so \boxed{4}", "<think>x</think> 5", "7 8 9"]
ANSWERS = ["4", "5", "9"]


def quiet_call(fn, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return safe_reward_call(fn, PROMPTS, COMPLETIONS, **kwargs)


@pytest.fixture
def scorer():
    made = []

    def make(funcs, **kwargs):
        made.append(RewardScorer(funcs, isolation="process", **kwargs))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_functions_run_in_the_worker_and_score_as_in_process(scorer):
    s = scorer(["accuracy", "format", "helpers:digit_fraction_reward", helpers.pid_reward])
    worker_pid = s.worker.proc.pid
    assert worker_pid != os.getpid()
    expected = [accuracy_reward(PROMPTS, COMPLETIONS, answer=ANSWERS), format_reward(PROMPTS, COMPLETIONS),
                helpers.digit_fraction_reward(PROMPTS, COMPLETIONS), [float(worker_pid % 1_000_000)] * 3]
    for fn, want in zip(s.funcs, expected):
        assert quiet_call(fn, reward_timeout=30.0, answer=ANSWERS) == (want, [])
    # the wrappers keep the functions' names and signatures (metrics keys, required columns)
    assert [f.__name__ for f in s.funcs] == ["accuracy_reward", "format_reward", "digit_fraction_reward",
                                             "pid_reward"]
    from g2rpo_fast.data.sources import required_columns

    assert required_columns(s.funcs[0]) == ["answer"]


@pytest.mark.parametrize("fn, says", [
    (helpers.dying_reward, "died during the call (exit status 0)"),
    (helpers.crashing_reward, "died during the call (killed by SIGSEGV)"),
], ids=["os_exit", "segfault"])
def test_a_dying_worker_fails_the_call_and_the_next_call_gets_a_fresh_one(scorer, fn, says):
    s = scorer([fn, "helpers:digit_fraction_reward"])
    values, errors = quiet_call(s.funcs[0], reward_timeout=30.0)
    assert values == [0.0, 0.0, 0.0]
    assert errors and says in errors[0], errors
    starts = s.worker.starts
    values, errors = quiet_call(s.funcs[1], reward_timeout=30.0)
    assert values == helpers.digit_fraction_reward(PROMPTS, COMPLETIONS) and errors == []
    assert s.worker.starts == starts + 1  # a fresh worker served it


def test_a_worker_killed_between_calls_is_replaced(scorer):
    import signal

    s = scorer(["helpers:digit_fraction_reward"])
    pid = s.worker.proc.pid
    os.kill(pid, signal.SIGKILL)  # e.g. by the OOM killer while idle
    s.worker.proc.join()
    assert quiet_call(s.funcs[0], reward_timeout=30.0) == (helpers.digit_fraction_reward(PROMPTS, COMPLETIONS), [])
    assert s.worker.starts == 2 and s.worker.proc.pid != pid


def test_a_hanging_call_is_killed_at_the_timeout(scorer):
    s = scorer([helpers.hanging_reward])
    pid = s.worker.proc.pid
    values, errors = quiet_call(s.funcs[0], reward_timeout=1.0)
    assert values == [0.0, 0.0, 0.0] and len(errors) == 1
    assert "no result after 1 s (reward_timeout); its worker process was killed" in errors[0]
    assert not os.path.exists(f"/proc/{pid}")  # killed and reaped, not left running like a thread


def test_sys_exit_is_a_failed_call_and_keyboard_interrupt_stops(scorer):
    s = scorer([helpers.sys_exit_reward, helpers.interrupting_reward])
    values, errors = quiet_call(s.funcs[0], reward_timeout=30.0)
    assert values == [0.0, 0.0, 0.0] and "called sys.exit(3)" in errors[0]
    assert s.worker.starts == 1  # SystemExit is caught in the worker: it stays
    assert quiet_call(s.funcs[1], reward_timeout=30.0)[1] == []  # the worker's first call scores
    with warnings.catch_warnings(record=True) as caught, pytest.raises(KeyboardInterrupt):
        warnings.simplefilter("always")
        safe_reward_call(s.funcs[1], PROMPTS, COMPLETIONS, reward_timeout=30.0)  # its second raises
    assert any("KeyboardInterrupt" in str(w.message) and "the run stops as on Ctrl-C" in str(w.message)
               for w in caught)


def test_a_function_the_worker_cannot_get_is_refused_at_set_up():
    with pytest.raises(ValueError, match=r"`reward_isolation`: process: the reward function .*<lambda> cannot be sent"):
        RewardScorer([lambda prompts, completions, **kw: [0.0] * len(completions)], isolation="process")
    with pytest.raises(ValueError, match="`reward_isolation` must be one of"):
        RewardScorer(["accuracy"], isolation="thread")


def test_training_survives_a_reward_that_ends_its_process(tmp_path):
    """In-process, `os._exit(0)` in a reward ends the run with status 0 and no output. With the
    worker, the steps go on: the call fails, is recorded, and the worker is replaced."""
    cfg = make_config(tmp_path, max_steps=3, reward_isolation="process",
                      reward_funcs=["helpers:dying_reward", "helpers:digit_fraction_reward", "accuracy"])
    trainer = make_trainer(cfg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            history = trainer.train()
    finally:
        trainer.close()
    assert [m["step"] for m in read_metrics(cfg)] == [1, 2, 3]
    for m in history:
        assert m["rewards/dying_reward/mean"] == 0.0 and m["rewards/digit_fraction_reward/mean"] > 0
        assert any("dying_reward" in e and "died during the call" in e for e in m["reward_failures"])
    assert trainer.rewards.worker.proc is None  # close() stopped it
    assert os.path.isfile(os.path.join(cfg.output_dir, "train_results.json"))
