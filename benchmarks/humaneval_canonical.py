"""HumanEval's canonical solutions, given as a base model writes them (the function body only),
through the trainer's reward path: the data set loaded as the trainer loads it (`.jsonl.gz`
through `datasets`), `reward_inputs` and `RewardScorer(["code"])` as in a training step.

    .venv/bin/python benchmarks/humaneval_canonical.py --data ../shared/data/HumanEval.jsonl.gz \\
        [--out benchmarks/results/humaneval_canonical.md]

Beside it, side by side in the same run, the program the reward ran before completion-style
prompts were recognised (the completion's code alone), which scores 0: a body alone is an
IndentationError. The data file is read in place, never copied.
"""
from __future__ import annotations

import argparse
import os
import time

from report import emit  # benchmarks/report.py (the script's own folder is on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/HumanEval.jsonl.gz")
    parser.add_argument("--sandbox", default="auto")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from g2rpo_fast.data.loading import load_prompts
    from g2rpo_fast.rewards import check_code_sandbox, code_reward, score_code
    from g2rpo_fast.rewards.extract import extract_code
    from g2rpo_fast.rewards.scoring import RewardScorer, reward_inputs
    from g2rpo_fast.rollout.composition import Sample

    rows = list(load_prompts(args.data, split="train", required=()))  # the trainer's loader, .gz included
    check_code_sandbox(args.sandbox, [code_reward])
    # one sample per problem: the canonical body as the completion text (guided or not, it is text)
    samples = [Sample(i, [], [], text=row["canonical_solution"]) for i, row in enumerate(rows)]
    t0 = time.perf_counter()
    scores = RewardScorer(["code"]).score(*reward_inputs(rows, samples, "prompt"))
    seconds = time.perf_counter() - t0
    passed = sum(v == 1.0 for v in scores.total)
    failed = [rows[i]["task_id"] for i, v in enumerate(scores.total) if v != 1.0]
    before = sum(score_code(extract_code(s.text), rows[s.prompt_index]["test"],
                            rows[s.prompt_index]["entry_point"], prompt=rows[s.prompt_index]["prompt"]).passed
                 for s in samples)
    emit([
        "# HumanEval canonical solutions as body-only completions, through the trainer's reward path",
        "",
        f"`{os.path.basename(args.data)}` ({len(rows)} problems, loaded by `load_prompts` from the `.jsonl.gz`), "
        f"sandbox `{args.sandbox}`; each completion is the problem's `canonical_solution` (the body, as a "
        "base model completes HumanEval's prompt), scored by `RewardScorer(['code'])` on "
        "`reward_inputs(rows, samples, 'prompt')`, as a training step scores its roll-outs.",
        "",
        "| program the reward runs | passed |",
        "| --- | ---: |",
        f"| `prompt + body` (this code: `rewards/code.py`, `candidate_code`) | **{passed}/{len(rows)}** |",
        f"| the completion's code alone (before) | {before}/{len(rows)} |",
        "",
        f"Failed: {failed or 'none'}. Scoring took {seconds:.1f} s. Command: "
        "`.venv/bin/python benchmarks/humaneval_canonical.py --data ../shared/data/HumanEval.jsonl.gz "
        "--out benchmarks/results/humaneval_canonical.md`.",
    ], args.out)
    if passed != len(rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
