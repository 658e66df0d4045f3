"""Reward functions with TRL's signature ``fn(prompts, completions, **columns)``."""
from .accuracy import accuracy_reward, answers_match
from .code import build_program, code_reward, make_code_reward
from .extract import completion_text, extract_answer, extract_code
from .format import format_reward
from .registry import REWARD_FUNCS, get_reward_func, safe_reward_call
from .sandbox import SandboxResult, namespaces_available, run_program

__all__ = [
    "REWARD_FUNCS", "SandboxResult", "accuracy_reward", "answers_match", "build_program",
    "code_reward", "completion_text", "extract_answer", "extract_code", "format_reward",
    "get_reward_func", "make_code_reward", "namespaces_available", "run_program", "safe_reward_call",
]
