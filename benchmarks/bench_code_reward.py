"""Score HumanEval's 164 canonical solutions with code_reward; report passes and wall time.

    .venv/bin/python benchmarks/bench_code_reward.py [--data ../shared/data/HumanEval.jsonl.gz]

The data file is read in place (never copied into the repository).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time

from g2rpo_fast.rewards import make_code_reward, namespaces_available
from g2rpo_fast.rewards.code import default_workers

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "HumanEval.jsonl.gz"))


def load(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--isolation", default="auto", choices=["auto", "namespace", "process"])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    problems = load(args.data)
    completions = [p["prompt"] + p["canonical_solution"] for p in problems]
    tests = [p["test"] for p in problems]
    entries = [p["entry_point"] for p in problems]
    reward = make_code_reward(timeout=args.timeout, max_workers=args.workers, isolation=args.isolation)
    print(f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs; "
          f"namespace sandbox: {namespaces_available() and args.isolation != 'process'}; "
          f"workers: {args.workers or default_workers()}")
    for _ in range(args.repeats):
        start = time.perf_counter()
        rewards = reward([p["prompt"] for p in problems], completions, test=tests, entry_point=entries)
        wall = time.perf_counter() - start
        failed = [p["task_id"] for p, r in zip(problems, rewards) if r != 1.0]
        print(f"passed {int(sum(rewards))}/{len(problems)} in {wall:.2f} s "
              f"({1000 * wall / len(problems):.1f} ms/program); failed: {failed}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
