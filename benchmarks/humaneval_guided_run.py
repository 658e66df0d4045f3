"""A few G²RPO-A steps on HumanEval on the CPU: a tiny random Qwen3 (character tokenizer, 4096
positions), guidance from `canonical_solution`, the code reward on completion-style prompts. The
guided samples continue from the whole reference body and score above 0; the unguided ones (a
random model's text) score 0. It shows the reward path a HumanEval run trains on, not learning.

    .venv/bin/python benchmarks/humaneval_guided_run.py --data ../shared/data/HumanEval.jsonl.gz \\
        [--steps 3] [--out benchmarks/results/humaneval_guided_run_cpu.md]

The 8 problems with the shortest prompt + solution are used (a character model's context); the
data file is read in place, never copied.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from report import emit  # benchmarks/report.py (the script's own folder is on sys.path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/HumanEval.jsonl.gz")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    from g2rpo_fast import G2RPOConfig, G2RPOTrainer
    from g2rpo_fast.data.loading import load_prompts
    from g2rpo_fast.models.tiny import build_tiny_model
    from g2rpo_fast.models.tokenizer import build_char_tokenizer

    torch.set_num_threads(2)
    data = load_prompts(args.data, split="train", required=())
    order = sorted(range(len(data)), key=lambda i: len(data[i]["prompt"]) + len(data[i]["canonical_solution"]))
    train = data.select(order[:8])
    tok = build_char_tokenizer(model_max_length=4096)
    model = build_tiny_model(0, tokenizer=tok, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=16, intermediate_size=128, max_position_embeddings=4096)
    out = tempfile.mkdtemp(prefix="humaneval_guided_")
    args_ = G2RPOConfig(output_dir=out, reward_funcs=["code"], guidance_field="canonical_solution",
                        guidance_schedule="fixed", guidance_initial_length=1024, guidance_max_length=1024,
                        guidance_ratio=0.5, num_generations=4, per_device_train_batch_size=8,
                        max_completion_length=8, max_steps=args.steps, logging_steps=1, learning_rate=1e-5,
                        gradient_checkpointing=False, eval_at_end=False, plots=False, seed=0, log_completions=True,
                        num_completions_to_print=0)
    t0 = time.perf_counter()
    trainer = G2RPOTrainer(model, args_.reward_funcs, args=args_, train_dataset=train, processing_class=tok)
    history = trainer.train()
    seconds = time.perf_counter() - t0
    with open(os.path.join(out, "completions.jsonl"), encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    guided = [r["reward"] for r in rows if r["guided"]]
    unguided = [r["reward"] for r in rows if not r["guided"]]
    lines = [
        "# A few G²RPO-A steps on HumanEval (CPU, tiny random model, guidance from canonical_solution)",
        "",
        f"{len(train)} HumanEval problems (shortest prompt + solution) from `{os.path.basename(args.data)}`; a "
        "random tiny Qwen3 (hidden 64, 2 layers, character tokenizer, 4096 positions); `reward_funcs: [code]`, "
        "`guidance_field: canonical_solution`, fixed guidance of up to 1024 tokens (the whole body), half of each "
        "group of 4 guided, 8 new tokens. Per step, the mean code reward of the guided and the unguided samples:",
        "",
        "| step | reward | reward_guided | reward_unguided | guidance tokens given (mean) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in history:
        lines.append(f"| {m['step']} | {m['reward']:.3f} | {m['reward_guided']:.3f} | {m['reward_unguided']:.3f} | "
                     f"{m['guidance_length_injected']:.0f} |")
    lines += [
        "",
        f"Over all steps: guided samples {sum(guided):.0f}/{len(guided)} passed, unguided {sum(unguided):.0f}/"
        f"{len(unguided)}. A guided completion is the whole reference body followed by 8 tokens of a random "
        "model; the reward cuts it where the function ends (the first line at column 0), so it fails only when "
        "those tokens continue the body (an indented line). Wall time {:.1f} s on 2 threads. Command: "
        "`.venv/bin/python benchmarks/humaneval_guided_run.py --data ../shared/data/HumanEval.jsonl.gz "
        "--out benchmarks/results/humaneval_guided_run_cpu.md`.".format(seconds),
    ]
    emit(lines, args.out)
    if not sum(guided) > 0:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
