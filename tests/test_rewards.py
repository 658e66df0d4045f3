"""Accuracy, format, registry and safe-call tests (no subprocesses)."""
import math
import warnings

import pytest

from g2rpo_fast.rewards import (
    accuracy_reward,
    extract_answer,
    extract_code,
    format_reward,
    get_reward_func,
    safe_reward_call,
)
from g2rpo_fast.rewards.code import code_reward


def acc(completion, answer):
    return accuracy_reward(["p"], [completion], answer=[answer])[0]


@pytest.mark.parametrize("text, expected", [
    (r"so \boxed{132}.", "132"),
    (r"first \boxed{1} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{\frac{\sqrt{2}}{\left\{3\right\}}}", r"\frac{\sqrt{2}}{\left\{3\right\}}"),
    ("steps\n#### 72\nbye", "72"),
    ("#### 1\n#### 1,234 \n", "1,234"),
    (r"#### 5 then \boxed{6}", "6"),
    ("no answer here", None),
    (r"unbalanced \boxed{12", None),
    ("####   \n", None),
    (r"first \boxed{3} then \boxed{x\\}", r"x\\"),  # an escaped backslash does not escape the brace
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_accuracy_boxed_and_hashes():
    assert acc(r"The answer is \boxed{132}", "132") == 1.0
    assert acc("work...\n#### 132", "132") == 1.0
    assert acc("#### 1,000.", "1000") == 1.0
    assert acc(r"\boxed{132.0}", "132") == 1.0


def test_accuracy_nested_boxed_and_latex_equivalence():
    assert acc(r"\boxed{\frac{1}{2}}", r"\frac{1}{2}") == 1.0
    assert acc(r"\boxed{0.5}", r"\frac{1}{2}") == 1.0
    assert acc(r"\boxed{\dfrac{2}{4}}", "1/2") == 1.0
    assert acc(r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}") == 1.0


def test_accuracy_wrong_and_missing():
    assert acc(r"\boxed{131}", "132") == 0.0
    assert acc(r"\boxed{\frac{1}{3}}", r"\frac{1}{2}") == 0.0
    assert acc("I think it is 132", "132") == 0.0
    assert acc("", "132") == 0.0
    assert acc(r"\boxed{}", "132") == 0.0
    assert acc(r"\boxed{\frac{1}{", "132") == 0.0  # garbage never raises


def test_accuracy_gold_as_full_solution():
    assert acc(r"\boxed{18}", "16 - 3 - 4 = 9 eggs, 9 * 2 = 18\n#### 18") == 1.0


def test_accuracy_conversational_and_batch():
    convo = [{"role": "user", "content": "q"}, {"role": "assistant", "content": r"\boxed{7}"}]
    rewards = accuracy_reward(["p", "p", "p"], [convo, r"\boxed{8}", "#### 7"], answer=["7", "7", "7"])
    assert rewards == [1.0, 0.0, 1.0]


def test_accuracy_from_worker_thread():
    # math-verify's signal-based timeout cannot run off the main thread; we must not fail there.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        out = pool.submit(accuracy_reward, ["p"], [r"\boxed{\frac{3}{6}}"], answer=["0.5"]).result()
    assert out == [1.0]


def test_extract_code():
    assert extract_code("text\n```python\nx = 1\n```\nmore\n```python\ny = 2\n```") == "y = 2\n"
    assert extract_code("```\nz = 3\n```") == "z = 3\n"
    assert extract_code("def f(): pass") == "def f(): pass"


def test_format_reward():
    good = "<think>let me see</think>\nThe answer is 4."
    bad = ["The answer is 4.", "<think>no close tag. 4", "<think>x</think>", "4 <think>x</think> 5",
           "<think>a</think><think>b</think> 4"]
    assert format_reward(["p"] * 6, [good] + bad) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert format_reward(["p"], [[{"role": "assistant", "content": good}]]) == [1.0]


def test_registry():
    assert get_reward_func("accuracy") is accuracy_reward
    assert get_reward_func("accuracy_reward") is accuracy_reward
    assert get_reward_func("format") is format_reward
    assert get_reward_func("code") is code_reward
    assert get_reward_func("g2rpo_fast.rewards.extract:extract_answer") is extract_answer
    assert get_reward_func(len) is len
    with pytest.raises(ValueError, match="nope"):
        get_reward_func("nope")
    with pytest.raises(ValueError, match="no_such_module_xyz"):
        get_reward_func("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="missing"):
        get_reward_func("g2rpo_fast.rewards:missing")


def test_safe_reward_call_isolates_raising_sample():
    def picky(prompts, completions, **kw):
        if any(c == "boom" for c in completions):
            raise RuntimeError("bad sample")
        return [1.0 for _ in completions]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rewards, errors = safe_reward_call(picky, ["p"] * 3, ["a", "boom", "c"], answer=["1", "2", "3"])
    assert rewards == [1.0, 0.0, 1.0]
    assert errors and all("picky" in e for e in errors)
    assert any("sample 1" in e for e in errors)
    assert any("picky" in str(w.message) for w in caught)


def test_safe_reward_call_non_finite_and_none():
    def odd(prompts, completions, **kw):
        return [math.nan, None, math.inf, 0.5]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rewards, errors = safe_reward_call(odd, ["p"] * 4, ["a", "b", "c", "d"])
    assert rewards == [0.0, 0.0, 0.0, 0.5]
    assert len(errors) == 3 and all("odd" in e for e in errors)


def test_safe_reward_call_wrong_length_and_clean_call():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rewards, errors = safe_reward_call(lambda p, c, **k: [1.0], ["p"] * 2, ["a", "b"])
    assert rewards == [1.0, 1.0] and errors
    rewards, errors = safe_reward_call(accuracy_reward, ["p"], [r"\boxed{2}"], answer=["2"])
    assert rewards == [1.0] and errors == []


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = safe_reward_call(fn, *args, **kwargs)
    return out, [str(w.message) for w in caught]


def test_safe_reward_call_timeout_scores_zero_once_without_retrying():
    import threading

    release, calls = threading.Event(), []

    def stuck(prompts, completions, **kw):
        calls.append(len(completions))
        release.wait(30)
        return [1.0] * len(completions)

    try:
        (rewards, errors), shown = _quiet(stuck, ["p"] * 3, ["a", "b", "c"], reward_timeout=0.2, answer=["1"] * 3)
    finally:
        release.set()
    assert rewards == [0.0, 0.0, 0.0] and calls == [3]
    assert len(errors) == 1 and len(shown) == 1 and "no result after 0.2 s" in errors[0]
    # A fast function under a timeout runs normally (in the worker thread), columns included.
    (rewards, errors), _ = _quiet(accuracy_reward, ["p"], [r"\boxed{2}"], reward_timeout=5.0, answer=["2"])
    assert rewards == [1.0] and errors == []


def test_safe_reward_call_catches_sys_exit_like_an_exception():
    import sys

    def exits_on_b(prompts, completions, **kw):
        if "b" in completions:
            sys.exit(3)
        return [0.5] * len(completions)

    (rewards, errors), _ = _quiet(exits_on_b, ["p"] * 3, ["a", "b", "c"])
    assert rewards == [0.5, 0.0, 0.5]
    assert any("sample 1" in e and "sys.exit(3)" in e for e in errors)
    (rewards, errors), _ = _quiet(exits_on_b, ["p"] * 2, ["a", "b"], reward_timeout=5.0)  # in a thread too
    assert rewards == [0.5, 0.0]


def test_failed_batch_retries_are_bounded():
    from g2rpo_fast.rewards.registry import MAX_FAILED_RETRIES

    calls = []

    def broken(prompts, completions, **kw):
        calls.append(len(completions))
        raise RuntimeError("always")

    (rewards, errors), _ = _quiet(broken, ["p"] * 10, [str(i) for i in range(10)])
    assert rewards == [0.0] * 10
    assert calls == [10] + [1] * MAX_FAILED_RETRIES  # not n + 1 = 11 calls
    assert "samples 3..9 scored 0.0 without calling it" in errors[-1]


def test_huge_rewards_are_clipped_to_the_documented_range():
    from g2rpo_fast.rewards.registry import REWARD_LIMIT, weighted_total

    (rewards, errors), _ = _quiet(lambda p, c, **k: [1e308, -1e308, 5.0, 1e6], ["p"] * 4, list("abcd"))
    assert REWARD_LIMIT == 1e6 and rewards == [1e6, -1e6, 5.0, 1e6] and len(errors) == 2
    # Finite weights times clipped rewards never overflow (inf - inf would be NaN).
    assert weighted_total([1e6, 1e6], [1e308, -1e308], REWARD_LIMIT) == 0.0
    assert weighted_total([0.5, 1.0], [2.0, 3.0], REWARD_LIMIT) == 4.0


def test_reward_functions_are_called_as_trl_calls_them():
    """By keyword (`prompts=`, `completions=`, the columns, `completion_ids`, `trainer_state`), so
    TRL's `fn(completions, **kwargs)` works; a function without **kwargs gets only what it
    names; one that names neither prompts nor completions gets them by position."""
    from g2rpo_fast.data.sources import required_columns

    seen = {}

    def trl_style(completions, **kwargs):
        seen.update(kwargs)
        return [float(len(c)) for c in completions]

    def strict(completions, answer):
        return [float(c == a) for c, a in zip(completions, answer)]

    columns = {"answer": ["ab", "x"], "completion_ids": [[1, 2], [3]], "trainer_state": "STATE"}
    assert safe_reward_call(trl_style, ["p", "q"], ["ab", "c"], **columns) == ([2.0, 1.0], [])
    assert seen["prompts"] == ["p", "q"] and seen["completion_ids"] == [[1, 2], [3]]
    assert seen["trainer_state"] == "STATE" and seen["answer"] == ["ab", "x"]
    assert safe_reward_call(strict, ["p", "q"], ["ab", "c"], **columns) == ([1.0, 0.0], [])
    assert safe_reward_call(lambda p, c, **k: [len(p[0])] * 2, ["pp", "q"], ["a", "b"], **columns) == ([2.0, 2.0], [])
    assert required_columns(strict) == ["answer"] and required_columns(trl_style) == []
    assert required_columns(lambda p, c, test, entry_point=None, **k: None) == ["test"]


def test_self_limiting_rewards_run_in_the_calling_thread_under_reward_timeout():
    """`reward_timeout` watches a user function from another thread, but calls the built-in
    rewards directly: they bound their own time per sample, and math-verify's per-answer
    timeout (signal.alarm) works only in the main thread."""
    import threading

    from g2rpo_fast.rewards import code_reward, format_reward

    seen = []

    def watched(prompts, completions, **kwargs):
        seen.append(threading.current_thread() is threading.main_thread())
        return [0.0] * len(completions)

    safe_reward_call(watched, ["p"], ["a"], reward_timeout=5.0)
    watched.limits_itself = True
    safe_reward_call(watched, ["p"], ["a"], reward_timeout=5.0)
    assert seen == [False, True]
    assert accuracy_reward.limits_itself and format_reward.limits_itself and code_reward.limits_itself
