"""Format reward: a ``<think>...</think>`` block followed by a non-empty answer."""
from __future__ import annotations

import re

from .extract import completion_text

# Optional leading whitespace, one think block, then some non-blank answer text.
_LAYOUT = re.compile(r"^\s*<think>(?:(?!</?think>).)+?</think>\s*(?!\s)(?:(?!</?think>).)+$", re.DOTALL)


def format_reward(prompts, completions, **kwargs) -> list[float]:
    """1.0 when a completion is ``<think>reasoning</think>`` followed by an answer, else 0.0."""
    return [1.0 if _LAYOUT.match(completion_text(c)) else 0.0 for c in completions]


format_reward.limits_itself = True  # one anchored regex per completion: `reward_timeout` need not watch it
