"""`skip_zero_signal_steps` on and off: weight drift and held-out accuracy, hard regime.

GRPO (no guidance) on the `hard` preset and its demo budget (`g2rpo_fast.demo.REGIMES`), the
shipped built-in model, at each `--lrs` learning rate, with and without skipping the optimizer
step on steps where no trained token has a non-zero advantage, over `--seeds` (paired: the same
seed sees the same prompts and samples until the runs' weights first differ). Per run:

- held-out accuracy (greedy, and sampled at the training temperature);
- drift: ||θ_T - θ_0|| / ||θ_0|| over all weights after the last step;
- path: Σ_k ||θ_k - θ_{k-1}||, and the share of it walked on steps without signal (every group's
  rewards equal, beta = 0: the gradient is exactly zero there, only AdamW's momentum and weight
  decay move the weights).

    OMP_NUM_THREADS=1 nohup nice -n 5 .venv/bin/python benchmarks/skip_zero_signal.py --lrs 1e-4 3e-5 \\
        --seeds 0 1 2 --jobs 2 --out benchmarks/results/skip_zero_signal_hard.md
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time

from report import emit

from g2rpo_fast.demo import REGIMES
from g2rpo_fast.seed_stats import mean_ci, paired_comparison
from g2rpo_fast.trainer.config import G2RPOConfig


def run_one(cfg, threads: int) -> dict:
    import torch

    from g2rpo_fast.trainer.trainer import G2RPOTrainer

    torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer = G2RPOTrainer(cfg)
    flat = lambda: torch.cat([p.detach().reshape(-1).double() for p in trainer.model.parameters()])
    start = flat()
    steps, inner, previous = [], trainer.training_step, [start]

    def measured_step():
        m = inner()
        now = flat()
        steps.append({"move": float((now - previous[0]).norm()), "signal": m["frac_reward_zero_std"] < 1.0})
        previous[0] = now
        return m

    trainer.training_step = measured_step
    history = trainer.train()
    final = trainer.final_eval
    path = sum(s["move"] for s in steps)
    silent = sum(s["move"] for s in steps if not s["signal"])
    return {"lr": cfg.learning_rate, "skip": cfg.skip_zero_signal_steps, "seed": cfg.seed,
            "eval_accuracy": final["eval_accuracy"], "eval_sampled_accuracy": final["eval_sampled_accuracy"],
            "drift": float((previous[0] - start).norm() / start.norm()), "path": path,
            "silent_share": silent / path if path else 0.0, "silent_steps": sum(not s["signal"] for s in steps),
            "steps_skipped": history[-1]["steps_skipped"], "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-steps", type=int, default=None, help="default: the hard regime's demo budget")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (results depend on it)")
    ap.add_argument("--work", default=os.path.join("scratch", "skip_zero_signal"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    preset, budget = REGIMES["hard"]
    if args.max_steps:
        budget = {**budget, "max_steps": args.max_steps}
    base = G2RPOConfig.from_yaml(preset, **budget, guidance_schedule="none", progress_bar=False, plots=False,
                                 save_steps=0, overwrite_output_dir=True)
    name = lambda lr, skip, seed: f"lr{lr:g}-{'skip' if skip else 'noskip'}-s{seed}"
    configs = [dataclasses.replace(base, learning_rate=lr, skip_zero_signal_steps=skip, seed=seed,
                                   output_dir=os.path.join(args.work, name(lr, skip, seed)))
               for lr in args.lrs for seed in args.seeds for skip in (True, False)]
    t0, load_before, date = time.perf_counter(), os.getloadavg(), datetime.date.today().isoformat()
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    runs = []
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
        for run in pool.map(run_one, configs, [args.threads] * len(configs)):
            print(f"[skip] {run}", flush=True)
            runs.append(run)
    seconds, load_after = time.perf_counter() - t0, os.getloadavg()
    load = lambda x: "/".join(f"{v:.1f}" for v in x)
    lines = [
        "# `skip_zero_signal_steps`: weight drift and held-out accuracy, hard regime", "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '<unset>')} python "
        f"benchmarks/skip_zero_signal.py {' '.join(sys.argv[1:])}` ({date}).", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs (load average "
        f"{load(load_before)} before, {load(load_after)} after); {args.jobs} runs at a time, {args.threads} torch "
        f"thread(s) per run; wall time {seconds:.0f} s.", "",
        f"Each run: GRPO (no guidance) on the `{preset}` preset ({base.max_steps} steps x "
        f"{base.per_device_train_batch_size} completions, G = {base.num_generations}, beta {base.beta}, weight decay "
        f"{base.weight_decay}), the shipped built-in model, {base.embedded_eval_size} held-out prompts. Drift: "
        "||θ_T − θ_0|| / ||θ_0||. Path: Σ_k ||θ_k − θ_(k−1)||; silent share: the part of the path walked on steps "
        "where every group's rewards were equal (zero gradient). Mean ± 95 % t interval over seeds; Δ: skip − no "
        "skip, paired by seed (p: paired t-test / exact sign-flip test).", "",
        "| lr | skip | held-out greedy | held-out sampled | drift | path | silent share of the path | steps without "
        "signal | steps skipped |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    fmt = lambda pair, d=3: f"{pair[0]:.{d}f} ± {pair[1]:.{d}f}"
    for lr in args.lrs:
        for skip in (True, False):
            cell = sorted((r for r in runs if r["lr"] == lr and r["skip"] == skip), key=lambda r: r["seed"])
            col = lambda key, cell=cell: [r[key] for r in cell]
            lines.append(f"| {lr:g} | {'on' if skip else 'off'} | {fmt(mean_ci(col('eval_accuracy')))} | "
                         f"{fmt(mean_ci(col('eval_sampled_accuracy')))} | {fmt(mean_ci(col('drift')), 4)} | "
                         f"{fmt(mean_ci(col('path')), 2)} | {fmt(mean_ci(col('silent_share')), 2)} | "
                         f"{fmt(mean_ci(col('silent_steps')), 1)} | {fmt(mean_ci(col('steps_skipped')), 1)} |")
    lines += ["", "| lr | Δ greedy (skip − no skip) | p | Δ sampled | p | Δ drift | p |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for lr in args.lrs:
        on = sorted((r for r in runs if r["lr"] == lr and r["skip"]), key=lambda r: r["seed"])
        off = sorted((r for r in runs if r["lr"] == lr and not r["skip"]), key=lambda r: r["seed"])
        cells = []
        for key, d in (("eval_accuracy", 3), ("eval_sampled_accuracy", 3), ("drift", 4)):
            t = paired_comparison([r[key] for r in on], [r[key] for r in off])
            cells += [f"{t['diff']:+.{d}f} ± {t['ci']:.{d}f}", f"{t['p_t']:.3f} / {t['p_sign_flip']:.3f}"]
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    emit(lines, args.out)
    if args.out:
        with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
            json.dump({"date": date, "seconds": seconds, "runs": runs}, fh, indent=1)


if __name__ == "__main__":
    main()
