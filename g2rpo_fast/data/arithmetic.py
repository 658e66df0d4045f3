"""The built-in task: multi-digit addition with column-by-column worked solutions.

It reproduces the situation G2RPO-A is about on a CPU: multi-step reasoning, a worked
reference solution per problem (the guidance source), a verifiable answer, and graded
difficulty (number of digits) so a weak model has dense rewards on easy problems and sparse
rewards on hard ones.

Format (every column line has the same width, ``a+b+c=ss``, so a tiny model can find the
previous line by relative position)::

    prompt:   "Q: 473+958=?\n"
    solution: "3+8+0=11\n7+5+1=13\n4+9+1=14\n#### 1431"

Each line adds one column (units first) with the incoming carry and writes the two-digit
column sum; the tens digit is the next carry. The answer is the last column sum followed by
the units digits of the earlier lines, read bottom-up.

Train and eval splits are disjoint by construction: a stable hash of the problem assigns
every problem to exactly one split, whatever the seeds. Completions are graded by the one answer
checker, `g2rpo_fast.rewards.accuracy_reward` (the text after the last ``####``).
"""
from __future__ import annotations

import random
import zlib
from collections.abc import Mapping, Sequence

ANSWER_MARKER = "#### "
MIN_DIFFICULTY, MAX_DIFFICULTY = 1, 5
SPLITS = ("train", "eval")
# One problem in EVAL_MODULUS goes to the eval split.
EVAL_MODULUS = 10


def format_prompt(a: int, b: int) -> str:
    return f"Q: {a}+{b}=?\n"


def worked_solution(a: int, b: int) -> str:
    """Column addition, units first, carry written explicitly; ends with ``#### <a+b>``."""
    da, db = str(a)[::-1], str(b)[::-1]
    lines, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        lines.append(f"{x}+{y}+{carry}={s:02d}")
        carry = s // 10
    return "\n".join(lines) + f"\n{ANSWER_MARKER}{a + b}"


def split_of(a: int, b: int) -> str:
    """Stable (process- and seed-independent) assignment of a problem to a split."""
    return "eval" if zlib.crc32(f"{a}+{b}".encode()) % EVAL_MODULUS == 0 else "train"


def _operand(rng: random.Random, digits: int) -> int:
    # 1-digit operands include 0; longer ones have a non-zero leading digit.
    if digits == 1:
        return rng.randint(0, 9)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def _normalise_difficulties(difficulties) -> tuple[list[int], list[float]]:
    if isinstance(difficulties, int):
        difficulties = [difficulties]
    if isinstance(difficulties, Mapping):
        levels, weights = list(difficulties), [float(w) for w in difficulties.values()]
    else:
        levels, weights = list(difficulties), [1.0] * len(list(difficulties))
    if not levels:
        raise ValueError("difficulties must not be empty")
    for d in levels:
        if not isinstance(d, int) or not MIN_DIFFICULTY <= d <= MAX_DIFFICULTY:
            raise ValueError(f"difficulties: {d!r} not an int in [{MIN_DIFFICULTY}, {MAX_DIFFICULTY}]")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError("difficulties: weights must be >= 0 and not all 0")
    return levels, weights


def generate_problems(
    n: int,
    seed: int = 0,
    difficulties: Sequence[int] | Mapping[int, float] | int = (1, 2, 3, 4),
    split: str = "train",
    unique: bool | None = None,
) -> list[dict]:
    """``n`` problems as dicts with prompt/solution/answer/difficulty.

    ``difficulties``: levels drawn uniformly, or ``{level: weight}``. ``unique`` (default: True
    for eval, False for train) avoids repeats while the level's pool of problems allows it.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    levels, weights = _normalise_difficulties(difficulties)
    unique = (split == "eval") if unique is None else unique
    rng = random.Random(f"g2rpo_fast-arith-{split}-{seed}")
    seen: set[tuple[int, int]] = set()
    rows = []
    for _ in range(n):
        d = rng.choices(levels, weights)[0]
        for attempt in range(10_000):
            a, b = _operand(rng, d), _operand(rng, d)
            if split_of(a, b) != split:
                continue
            # Small pools (1 digit: ~10 eval problems) run out: allow repeats then.
            if unique and (a, b) in seen and attempt < 200:
                continue
            break
        seen.add((a, b))
        rows.append(
            {
                "prompt": format_prompt(a, b),
                "solution": worked_solution(a, b),
                "answer": str(a + b),
                "difficulty": d,
            }
        )
    return rows


def make_dataset(
    n: int,
    seed: int = 0,
    difficulties: Sequence[int] | Mapping[int, float] | int = (1, 2, 3, 4),
    split: str = "train",
    unique: bool | None = None,
):
    """A ``datasets.Dataset`` with columns prompt, solution, answer, difficulty."""
    import datasets

    rows = generate_problems(n, seed=seed, difficulties=difficulties, split=split, unique=unique)
    features = datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "solution": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "difficulty": datasets.Value("int64"),
        }
    )
    return datasets.Dataset.from_list(rows, features=features)


def make_splits(n_train: int = 2000, n_eval: int = 200, seed: int = 0, difficulties=(1, 2, 3, 4)):
    """``{"train": Dataset, "eval": Dataset}``; eval is balanced over the levels."""
    levels, _ = _normalise_difficulties(difficulties)
    return {
        "train": make_dataset(n_train, seed=seed, difficulties=difficulties, split="train"),
        "eval": make_dataset(n_eval, seed=seed, difficulties=levels, split="eval"),
    }
