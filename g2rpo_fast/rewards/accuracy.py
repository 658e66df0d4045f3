"""Accuracy reward: the completion's final answer checked against the gold answer."""
from __future__ import annotations

import functools
import logging
import re
import threading
from decimal import Decimal, InvalidOperation

from .extract import completion_text, extract_answer

logger = logging.getLogger(__name__)

# math-verify's own timeout uses signal.alarm, which only works in the main thread.
_VERIFY_TIMEOUT_S = 5
_PLAIN_NUMBER = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?$|^[+-]?\.\d+$")


def _clean_number(text: str) -> str:
    # "$1,234." / "72 \%" style decorations around a plain number.
    text = text.strip().strip("$").strip()
    text = re.sub(r"\\[%$]|%", "", text).strip()
    return text.rstrip(".").strip()


def _as_decimal(text: str) -> Decimal | None:
    text = _clean_number(text)
    if not _PLAIN_NUMBER.match(text):
        return None
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@functools.lru_cache(maxsize=65536)
def _math_equal(gold: str, pred: str, use_alarm: bool) -> bool:
    from math_verify import parse, verify

    timeout = _VERIFY_TIMEOUT_S if use_alarm else None
    gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=timeout)
    pred_parsed = parse("\\boxed{" + pred + "}", parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def answers_match(gold: str, pred: str) -> bool:
    """True when ``pred`` is equivalent to ``gold``; plain numbers are compared
    exactly first (cheap), anything else goes through math-verify. Never raises."""
    gold_num, pred_num = _as_decimal(gold), _as_decimal(pred)
    if gold_num is not None and pred_num is not None:
        return gold_num == pred_num
    try:
        return _math_equal(gold.strip(), pred.strip(), _in_main_thread())
    except BaseException as exc:  # math-verify's TimeoutException is not an Exception
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        logger.debug("math-verify failed on gold=%r pred=%r: %r", gold, pred, exc)
        return False


def _gold_text(answer) -> str:
    # Accept a bare answer ("132", "\\frac{1}{2}") or a full reference solution.
    text = completion_text(answer) if not isinstance(answer, (int, float)) else repr(answer)
    return extract_answer(text) or text.strip()


def accuracy_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when a completion's final answer (last ``\\boxed{}``, else after ``####``)
    is equivalent to ``answer``; 0.0 otherwise or when no answer can be extracted."""
    if isinstance(answer, (str, int, float)):
        answer = [answer] * len(completions)
    if len(answer) != len(completions):
        raise ValueError(f"answer: expected {len(completions)} entries, got {len(answer)}")
    rewards = []
    for completion, gold in zip(completions, answer):
        pred = extract_answer(completion)
        gold_text = _gold_text(gold) if gold is not None else ""
        rewards.append(1.0 if pred is not None and gold_text and answers_match(gold_text, pred) else 0.0)
    return rewards


# Bounded per answer by math-verify's own timeout (signal.alarm: the trainer calls rewards from
# the main thread), so `reward_timeout` calls it directly rather than in a watchdog thread.
accuracy_reward.limits_itself = True
