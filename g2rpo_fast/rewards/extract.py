"""Text helpers shared by the reward functions: completion text, final answer, code block."""
from __future__ import annotations

import re
from typing import Any

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)


def completion_text(completion: Any) -> str:
    """Plain text of a completion: a string, or TRL's conversational form
    (list of {"role", "content"} dicts) whose last assistant message is used."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        messages = [m for m in completion if isinstance(m, dict)]
        for message in reversed(messages):
            if message.get("role", "assistant") == "assistant":
                return _content_text(message.get("content"))
        return _content_text(messages[-1].get("content")) if messages else ""
    return str(completion)


def _content_text(content: Any) -> str:
    # Content may itself be a list of typed parts ({"type": "text", "text": ...}).
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def _balanced_group(text: str, open_index: int) -> str | None:
    """Content of the brace group opening at text[open_index] == "{", or None if unbalanced."""
    depth, i = 0, open_index
    while i < len(text):
        ch = text[i]
        if ch == "\\":  # skip the escaped character: \{ and \} do not count, \\ is a backslash
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : i]
        i += 1
    return None


def extract_answer(text: Any) -> str | None:
    """Final answer of a solution: the content of the last balanced ``\\boxed{...}``
    (nested braces allowed), else what follows the last ``####`` up to the end of its line.
    Returns None when there is no such answer (or it is empty)."""
    text = completion_text(text)
    for match in reversed(list(_BOXED.finditer(text))):
        content = _balanced_group(text, match.end() - 1)
        if content is not None and content.strip():
            return content.strip()
    pos = text.rfind("####")
    if pos >= 0:
        answer = text[pos + 4 :].split("\n", 1)[0].strip()
        return answer or None
    return None


def extract_code(text: Any) -> str:
    """The last fenced code block (```python ... ``` or ``` ... ```); the whole text if none."""
    text = completion_text(text)
    blocks = _FENCE.findall(text)
    if not blocks:
        return text
    python_blocks = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    untagged = [body for lang, body in blocks if not lang]
    candidates = python_blocks or untagged or [body for _, body in blocks]
    return candidates[-1]
