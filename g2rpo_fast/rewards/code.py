"""Code reward: score a completion's code against HumanEval-style tests in the sandbox.

The program is the completion's code (its last fenced block, else its whole text). When the
prompt is Python that defines the entry point (HumanEval's completion-style prompt: imports,
helpers, the signature and docstring of the entry point), the program is `prompt + code`, as
human-eval's own harness runs `prompt + completion` (`candidate_code`): a code that defines the
entry point (a chat model's whole function) redefines the prompt's stub and still sees its
imports and helpers; a code that does not (a base model's body) completes it, up to the first
non-blank line at column 0, which is where HumanEval's stop sequences (`\ndef`, `\nclass`,
`\nif`, `\nprint`, `\n#`) cut a sampled completion: what a model writes after the function is not
part of it.

Two modes (``SandboxResult.mode``):

* ``boundary`` (the default): the test's ``check(candidate)`` runs in a trusted tester
  process; the completion's functions run in the sandbox and answer calls with plain data.
  When the prompt is Python (HumanEval), its definitions (helpers such as ``poly``) come from
  the prompt, not from the completion. Other names the test reads but never defines are
  looked up in the completion (callables as proxies, plain values copied).
* ``in_process``: completion + test + ``check(entry_point)`` run together in the sandbox and
  pass when the program returns. Used only when the *test* passes a non-plain value (a
  lambda, an object) to the candidate; a completion cannot steer into it (a non-plain result
  fails). This mode stops early exits and leaks no secret (there is none), but code that
  targets the runner (redefining ``check``, patching builtins) can forge it: turn it off with
  ``in_process_fallback=False`` (such samples then score 0).
"""
from __future__ import annotations

import ast
import os
from concurrent.futures import ThreadPoolExecutor

from .extract import extract_code
from .sandbox import (
    SandboxLimits,
    SandboxResult,
    SandboxUnavailableError,
    resolve_sandbox,
    run_job,
    set_default_sandbox,
    validate_mode,
    warn_once,
)


def build_program(code: str, test: str, entry_point: str) -> str:
    """HumanEval's convention: solution, then the test (defines ``check``), then the call."""
    return f"{code}\n{test}\ncheck({entry_point})\n"


def default_workers() -> int:
    return max(2, min(32, (os.cpu_count() or 1) * 2))


def _prompt_code(prompt) -> str | None:
    if not isinstance(prompt, str):
        return None
    try:
        ast.parse(prompt)
    except (SyntaxError, ValueError):
        return None
    return prompt


def defines(code: str, name: str) -> bool:
    """Whether `code` parses and binds `name` at its top level (def, class, assignment, import)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(n, ast.Name) and n.id == name for t in targets for n in ast.walk(t)):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((alias.asname or alias.name).split(".")[0] == name for alias in node.names):
                return True
    return False


def function_body(code: str) -> str:
    """A body-only completion up to the first non-blank line that starts at column 0."""
    lines = code.splitlines(keepends=True)
    end = next((i for i, line in enumerate(lines) if line.strip() and not line[0].isspace()), len(lines))
    return "".join(lines[:end])


def candidate_code(completion, prompt, entry_point: str) -> str:
    """The program a completion is tested as: its code; after the prompt when the prompt is
    Python that defines `entry_point` (its stub), the code whole when it defines `entry_point`
    too, else its function body."""
    code = extract_code(completion)
    prompt_code = _prompt_code(prompt)
    if prompt_code is None or not isinstance(entry_point, str) or not defines(prompt_code, entry_point):
        return code
    if defines(code, entry_point):
        return f"{prompt_code}\n{code}"
    return prompt_code + function_body(code)


def _limits(timeout, memory_mb, tmpfs_mb, max_pids) -> SandboxLimits:
    return SandboxLimits(timeout=timeout, memory_bytes=int(memory_mb * (1 << 20)),
                         tmpfs_bytes=int(tmpfs_mb * (1 << 20)), max_pids=max_pids)


def score_code(code: str, test: str, entry_point: str, *, prompt=None, timeout: float = 5.0,
               memory_mb: float = 1024, tmpfs_mb: float = 32, max_pids: int = 64, sandbox: str | None = None,
               in_process_fallback: bool = True, python_paths=()) -> SandboxResult:
    """Score one program; ``sandbox`` None uses the default (see ``set_default_sandbox``)."""
    backend = resolve_sandbox(sandbox)
    limits = _limits(timeout, memory_mb, tmpfs_mb, max_pids)
    job = {"mode": "boundary", "code": code, "test": test, "entry_point": entry_point,
           "prompt_code": _prompt_code(prompt)}
    result = run_job(job, backend, limits, python_paths)
    if result.verdict == "in_process" and in_process_fallback:
        result = run_job({"mode": "in_process", "program": build_program(code, test, entry_point)},
                         backend, limits, python_paths)
    return result


def run_program(source: str, *, timeout: float = 5.0, memory_mb: float = 1024, tmpfs_mb: float = 32,
                max_pids: int = 64, sandbox: str | None = None, python_paths=()) -> SandboxResult:
    """Run a whole program in the sandbox (the in-process mode); passes when it returns."""
    return run_job({"mode": "in_process", "program": source}, resolve_sandbox(sandbox),
                   _limits(timeout, memory_mb, tmpfs_mb, max_pids), python_paths)


def _column(value, n: int, name: str) -> list:
    values = [value] * n if isinstance(value, str) or value is None else list(value)
    if len(values) != n:
        raise ValueError(f"{name}: expected {n} entries, got {len(values)}")
    return values


def make_code_reward(timeout: float = 5.0, memory_mb: float = 1024, max_workers: int | None = None,
                     sandbox: str | None = None, in_process_fallback: bool = True, tmpfs_mb: float = 32,
                     max_pids: int = 64, python_paths=()):
    """A TRL reward function with these sandbox settings. ``sandbox``: "auto", "bwrap",
    "namespace", "unsafe-process" or None (the process default, which the trainer sets from
    ``code_sandbox``). ``python_paths``: directories bound read-only and put on the
    candidate's ``sys.path`` (e.g. a site-packages the completions may import from)."""
    if sandbox is not None:
        validate_mode(sandbox, "sandbox")
    _limits(timeout, memory_mb, tmpfs_mb, max_pids)  # ValueError now, not at the first call
    if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)
                                    or max_workers < 1):
        raise ValueError(f"max_workers: expected a positive int or None, got {max_workers!r}")

    def code_reward(prompts, completions, test, entry_point, **kwargs) -> list[float]:
        n = len(completions)
        tests, entries = _column(test, n, "test"), _column(entry_point, n, "entry_point")
        # Prompts only serve as a trusted source of helper definitions: anything else is ignored.
        prompt_list = list(prompts) if isinstance(prompts, (list, tuple)) and len(prompts) == n else [None] * n
        if n == 0:
            return []
        resolve_sandbox(sandbox)  # refuse before starting anything

        def score(i: int) -> SandboxResult:
            code = candidate_code(completions[i], prompt_list[i], entries[i])
            return score_code(code, tests[i], entries[i], prompt=prompt_list[i],
                              timeout=timeout, memory_mb=memory_mb, tmpfs_mb=tmpfs_mb, max_pids=max_pids,
                              sandbox=sandbox, in_process_fallback=in_process_fallback, python_paths=python_paths)

        workers = min(n, max_workers or default_workers())
        if workers == 1:
            results = [score(i) for i in range(n)]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="code_reward") as pool:
                results = list(pool.map(score, range(n)))
        code_reward.last_results = results
        if any(r.mode == "in_process" for r in results):
            warn_once("in_process", "code_reward: some tests pass non-plain values to the candidate, so they "
                                    "were scored in-process, where targeted code can forge a pass "
                                    "(see g2rpo_fast/rewards/code.py; in_process_fallback=False scores them 0)")
        return [1.0 if r.passed else 0.0 for r in results]

    code_reward.__name__ = "code_reward"
    code_reward.uses_code_sandbox = True
    code_reward.limits_itself = True  # each sample has its sandbox's wall-clock timeout
    code_reward.code_sandbox = sandbox
    code_reward.last_results = []
    return code_reward


def check_code_sandbox(code_sandbox: str, reward_funcs) -> None:
    """Trainer set-up, before the model loads: make ``code_sandbox`` the default and make sure
    that every reward that runs untrusted code has a working sandbox (ValueError otherwise)."""
    set_default_sandbox(code_sandbox)
    for fn in reward_funcs:
        if getattr(fn, "uses_code_sandbox", False):
            try:
                resolve_sandbox(getattr(fn, "code_sandbox", None))
            except SandboxUnavailableError as exc:
                raise ValueError(f"`code_sandbox`: {exc}") from None


code_reward = make_code_reward()
code_reward.__doc__ = (
    "1.0 when the completion's code (last fenced block, else the whole text; prompt + code when that "
    "defines no entry point and the prompt is Python, as human-eval runs it) passes ``check(entry_point)`` "
    "from ``test``, judged by a trusted tester outside the sandbox, else 0.0. TRL reward signature.")
