"""Code reward: run the completion's code against HumanEval-style tests in the sandbox."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from .extract import extract_code
from .sandbox import run_program


def build_program(code: str, test: str, entry_point: str) -> str:
    """HumanEval's convention: solution, then the test (defines ``check``), then the call."""
    return f"{code}\n{test}\ncheck({entry_point})\n"


def default_workers() -> int:
    return max(2, min(32, (os.cpu_count() or 1) * 2))


def make_code_reward(timeout: float = 5.0, memory_mb: int = 1024, max_workers: int | None = None,
                     isolation: str = "auto"):
    """A TRL reward function with these sandbox settings (see ``sandbox.run_program``)."""

    def code_reward(prompts, completions, test, entry_point, **kwargs) -> list[float]:
        n = len(completions)
        tests = [test] * n if isinstance(test, str) else list(test)
        entries = [entry_point] * n if isinstance(entry_point, str) else list(entry_point)
        if len(tests) != n:
            raise ValueError(f"test: expected {n} entries, got {len(tests)}")
        if len(entries) != n:
            raise ValueError(f"entry_point: expected {n} entries, got {len(entries)}")
        programs = [build_program(extract_code(c), t, e) for c, t, e in zip(completions, tests, entries)]

        def score(program: str) -> float:
            result = run_program(program, timeout=timeout, memory_mb=memory_mb, isolation=isolation)
            return 1.0 if result.passed else 0.0

        if n == 0:
            return []
        workers = min(n, max_workers or default_workers())
        if workers == 1:
            return [score(p) for p in programs]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="code_reward") as pool:
            return list(pool.map(score, programs))

    code_reward.__name__ = "code_reward"
    return code_reward


code_reward = make_code_reward()
code_reward.__doc__ = (
    "1.0 when the completion's code (last fenced block, else the whole text) passes "
    "``check(entry_point)`` from ``test`` in the sandbox, else 0.0. TRL reward signature.")
