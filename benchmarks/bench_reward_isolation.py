"""What `reward_isolation: process` costs per step: the same rewards in the trainer's process
(`none`, the default) and in a worker process (`process`), side by side in one run.

1. One scoring call (`RewardScorer.score`, what the trainer calls once per generated
   micro-batch) with the built-in `accuracy` and `format` rewards, on micro-batches of
   synthetic completions: 64 short ones (the built-in task's size) and 64 / 256 of about
   4000 characters (~1000-token reasoning). Interleaved repeats, medians; the difference is
   the price of the worker (pickling prompts, completions and columns both ways, the pipe).
2. The worker's start (a spawned interpreter importing the rewards), paid once per run and
   after each worker death.
3. Training steps on the built-in default (64 completions a step): one trainer whose scorer is
   swapped between the settings on alternate steps (the same rewards and values, so the same
   run; both settings see the same machine load), medians of `step_time` and
   `rollout_time_s` (which holds the scoring).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reward_isolation.py \\
        --out benchmarks/results/reward_isolation_cpu.md
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

from report import emit

REWARDS = ["accuracy", "format"]


def batch(n: int, chars: int) -> tuple[list, list, dict]:
    """n prompts / completions of about `chars` characters ending in a boxed answer, half right."""
    prompts = [f"Problem {i}: add the numbers." for i in range(n)]
    filler = "Let me think step by step about the sum. " * max(1, chars // 42)
    completions = [f"<think>{filler[:chars]}</think> so the answer is \\boxed{{{i if i % 2 else i + 1}}}"
                   for i in range(n)]
    return prompts, completions, {"answer": [str(i) for i in range(n)]}


def time_scoring(sizes, repeats: int) -> tuple[list[str], float]:
    from g2rpo_fast.rewards.scoring import RewardScorer

    t0 = time.perf_counter()
    isolated = RewardScorer(REWARDS, isolation="process", reward_timeout=300.0)
    start_s = time.perf_counter() - t0
    scorers = {"none": RewardScorer(REWARDS, reward_timeout=300.0), "process": isolated}
    rows = []
    try:
        for n, chars in sizes:
            inputs = batch(n, chars)
            payload = sum(len(c) for c in inputs[1])
            times = {k: [] for k in scorers}
            results = {}
            for _ in range(repeats):  # interleaved: drift on a shared machine hits both alike
                for name, scorer in scorers.items():
                    t = time.perf_counter()
                    results[name] = scorer.score(*inputs)
                    times[name].append(time.perf_counter() - t)
            assert results["none"] == results["process"], "the two settings scored differently"
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            rows.append(f"| {n} x {chars} chars ({payload / 1e6:.2f} MB of completions) | {med['none']:.2f} | "
                        f"{med['process']:.2f} | {med['process'] - med['none']:+.2f} |")
    finally:
        isolated.close()
    return rows, start_s


def train_steps(steps: int) -> tuple[list[str], dict]:
    """One trainer on the built-in default; its scorer swapped between the two settings on
    alternate steps (same rewards, same values: the run is the same), so that both see the same
    machine load; medians over each setting's steps after a warm-up step of each."""
    from g2rpo_fast.rewards.scoring import RewardScorer
    from g2rpo_fast.trainer.config import G2RPOConfig
    from g2rpo_fast.trainer.trainer import G2RPOTrainer

    with tempfile.TemporaryDirectory(prefix="bench_reward_isolation_") as scratch:
        cfg = G2RPOConfig.from_yaml(None, output_dir=os.path.join(scratch, "run"), max_steps=2 * steps + 2,
                                    eval_at_end=False, plots=False, progress_bar=False, save_steps=0, warmup_steps=0)
        trainer = G2RPOTrainer(cfg)
        scorers = {"none": trainer.rewards,
                   "process": RewardScorer(cfg.reward_funcs, cfg.reward_weights, cfg.guidance_reward,
                                           cfg.reward_timeout, "process")}
        per = {k: [] for k in scorers}
        try:
            for k in range(2 * steps + 2):
                setting = ("none", "process")[k % 2]
                trainer.rewards = scorers[setting]
                per[setting].append(trainer.training_step())
        finally:
            scorers["process"].close()
    rows, med = [], {}
    for setting, ms in per.items():
        ms = ms[1:]  # each setting's first step warms up
        med[setting] = {key: statistics.median(m[key] for m in ms)
                        for key in ("step_time", "rollout_time_s", "train_time_s")}
        rows.append(f"| {setting} | {med[setting]['step_time']:.3f} | {med[setting]['rollout_time_s']:.3f} | "
                    f"{med[setting]['train_time_s']:.3f} |")
    rows.append("")
    rows.append("Step times in order (s), none / process alternating: " + ", ".join(
        f"{m['step_time']:.2f}" for pair in zip(per["none"], per["process"]) for m in pair))
    return rows, med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--steps", type=int, default=12, help="measured steps per setting")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    load_before = os.getloadavg()
    scoring, start_s = time_scoring([(64, 60), (64, 4000), (256, 4000)], args.repeats)
    train, med = train_steps(args.steps)
    import torch

    lines = [
        "# `reward_isolation`: the rewards in the trainer's process (`none`) or in a worker process (`process`)",
        "",
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores shared), torch {torch.__version__},"
        f" Python {platform.python_version()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
        f"load average before {tuple(round(x, 2) for x in load_before)}, after "
        f"{tuple(round(x, 2) for x in os.getloadavg())}.",
        "",
        f"Command: `python benchmarks/bench_reward_isolation.py --repeats {args.repeats} --steps {args.steps}`",
        "",
        f"## One scoring call (`RewardScorer.score`, rewards {REWARDS}), median of {args.repeats} interleaved repeats",
        "",
        "| micro-batch | none (ms) | process (ms) | cost of the worker (ms) |",
        "| --- | ---: | ---: | ---: |",
        *scoring,
        "",
        f"Starting the worker (spawn, importing the rewards; once per run and after a worker dies): "
        f"{start_s:.2f} s.",
        "",
        f"## Training steps, built-in default (64 completions a step): one trainer, its rewards in-process and in "
        f"the worker on alternate steps, {args.steps} measured steps each (after one warm-up step each); medians",
        "",
        "| reward_isolation | step (s) | roll-out phase, scoring included (s) | train phase (s) |",
        "| --- | ---: | ---: | ---: |",
        *train,
        "",
        f"Step time process / none: {med['process']['step_time'] / med['none']['step_time']:.3f}.",
    ]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
