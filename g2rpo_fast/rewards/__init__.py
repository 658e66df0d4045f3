"""Reward functions with TRL's signature ``fn(prompts, completions, **columns)``, their registry,
and the scorer that rewards a run's roll-outs with them (`scoring.py`)."""
from .accuracy import accuracy_reward, answers_match
from .code import build_program, check_code_sandbox, code_reward, make_code_reward, run_program, score_code
from .extract import completion_text, extract_answer, extract_code
from .format import format_reward
from .registry import REWARD_FUNCS, get_reward_func, safe_reward_call
from .sandbox import (
    SandboxLimits,
    SandboxResult,
    SandboxUnavailableError,
    default_sandbox,
    resolve_sandbox,
    sandbox_status,
    set_default_sandbox,
)

__all__ = [
    "REWARD_FUNCS", "SandboxLimits", "SandboxResult", "SandboxUnavailableError", "accuracy_reward",
    "answers_match", "build_program", "check_code_sandbox", "code_reward", "completion_text", "default_sandbox",
    "extract_answer", "extract_code", "format_reward", "get_reward_func", "make_code_reward", "resolve_sandbox",
    "run_program", "safe_reward_call", "sandbox_status", "score_code", "set_default_sandbox",
]
