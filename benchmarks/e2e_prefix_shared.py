"""End-to-end `g2rpo-fast train` step time with and without the prefix-shared forward, on
long (~512-token) prompts.

Builds, in a scratch directory (never in the repository):
  * a jsonl of GSM8K test questions, each behind a fixed two-shot preamble (median ≈ 530
    prompt tokens with the character tokenizer), from a local GSM8K jsonl (question/answer);
  * a tiny random Qwen3 (the benchmark's CPU model: hidden 256, 4 layers) with the built-in
    character tokenizer and a 2k context, saved as a local model directory.
Then runs `g2rpo-fast train` with `--prefix-shared-forward true` and `false`, interleaved,
`--runs` times each, and reports the medians of step / roll-out / train time over all steps
but each run's first. The roll-out phase holds generation, rewards and the reference
log-prob forward (beta > 0); the train phase the policy forward, loss, backward and AdamW.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/e2e_prefix_shared.py --data /work/shared/data/gsm8k_test.jsonl \
        --out benchmarks/results/prefix_shared_e2e_cpu.md
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from report import emit

PREAMBLE = ("Solve the problem. End with '#### <answer>'.\n\n"
            "Question: Tom has 3 apples and buys 5 bags of 4. How many apples now?\n"
            "Answer: 5 * 4 = 20. 3 + 20 = 23\n#### 23\n\n"
            "Question: A pen costs $2 and a book costs $7. How much do 6 pens and 2 books cost?\n"
            "Answer: 6 * 2 = 12. 2 * 7 = 14. 12 + 14 = 26\n#### 26\n\n")
MODEL = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
             intermediate_size=768, max_position_embeddings=2048)


def ascii_text(text: str) -> str:
    """The character tokenizer knows printable ASCII: typographic quotes become plain ones."""
    for a, b in (("\u2019", "'"), ("\u2018", "'"), ("\u201c", '"'), ("\u201d", '"')):
        text = text.replace(a, b)
    return text.encode("ascii", "replace").decode()


def make_data(source: str, path: str, rows: int) -> list[int]:
    lengths = []
    with open(source, encoding="utf-8") as src, open(path, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i >= rows:
                break
            row = json.loads(line)
            question = PREAMBLE + f"Question: {ascii_text(row['question'])}\nAnswer:"
            dst.write(json.dumps({"question": question, "answer": ascii_text(row["answer"])}) + "\n")
            lengths.append(len(question))  # one token per character
    return lengths


def make_model(path: str) -> None:
    from g2rpo_fast.models.tiny import build_tiny_model
    from g2rpo_fast.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(model_max_length=MODEL["max_position_embeddings"])
    build_tiny_model(0, tokenizer=tok, **MODEL).save_pretrained(path)
    tok.save_pretrained(path)


def train(work, setting, run, args) -> list[dict]:
    out = os.path.join(work, f"out_{setting}_{run}")
    cmd = [os.path.join(os.path.dirname(sys.executable), "g2rpo-fast"), "train",
           "--model-name-or-path", os.path.join(work, "model"), "--dataset-name", os.path.join(work, "data.jsonl"),
           "--eval-split", "none", "--eval-at-end", "false", "--plots", "false", "--progress-bar", "false",
           "--save-steps", "0", "--num-generations", "8", "--per-device-train-batch-size", "16",
           "--max-completion-length", "128", "--beta", "0.04", "--max-steps", str(args.steps),
           "--output-dir", out, "--overwrite-output-dir", "--prefix-shared-forward", setting]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a GSM8K jsonl (question/answer), e.g. the test split")
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory(prefix="g2rpo_e2e_") as work:
        lengths = make_data(args.data, os.path.join(work, "data.jsonl"), args.rows)
        make_model(os.path.join(work, "model"))
        before = uptime()
        steps = {"true": [], "false": []}
        per_run = []
        for run in range(args.runs):
            for setting in ("true", "false"):
                history = train(work, setting, run, args)
                steps[setting] += history[1:]  # the first step of a run warms up
                per_run.append((setting, run, [round(m["step_time"], 1) for m in history]))
                print(per_run[-1], flush=True)
        after = uptime()
    med = lambda rows, key: statistics.median(m[key] for m in rows)
    lines = ["# End to end: `g2rpo-fast train` on ~512-token prompts, prefix-shared forward on / off", "",
             f"CPU, torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '<unset>')}; "
             f"tiny random Qwen3 {MODEL} with the built-in character tokenizer; {args.rows} GSM8K questions behind "
             f"a fixed two-shot preamble: prompt tokens median {statistics.median(lengths):.0f} "
             f"(min {min(lengths)}, max {max(lengths)}); G = 8, 2 prompts per step, max 128 completion tokens, "
             f"guidance ratio 0.25 (default adaptive), beta 0.04; {args.steps} steps x {args.runs} runs per "
             f"setting, interleaved; medians over all steps but each run's first.", "",
             f"Command: `{' '.join(['python', 'benchmarks/e2e_prefix_shared.py', *sys.argv[1:]])}`", "",
             f"Load before: `{before}`; after: `{after}`.", "",
             "| prefix_shared_forward | step (s) | roll-out phase (s) | train phase (s) | completion tokens |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for setting in ("true", "false"):
        rows = steps[setting]
        lines.append(f"| {setting} | {med(rows, 'step_time'):.2f} | {med(rows, 'rollout_time_s'):.2f} | "
                     f"{med(rows, 'train_time_s'):.2f} | {med(rows, 'completion_length'):.0f} |")
    speed = med(steps["false"], "step_time") / med(steps["true"], "step_time")
    train_speed = med(steps["false"], "train_time_s") / med(steps["true"], "train_time_s")
    lines += ["", f"Step {speed:.2f}x faster with sharing; train phase {train_speed:.2f}x.", "",
              "Step times of every run (s): " + "; ".join(f"{s} #{r}: {t}" for s, r, t in per_run)]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
