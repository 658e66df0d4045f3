"""A peer row for the hard demo: GRPO through TRL's `GRPOTrainer`, same model, data and settings.

Each seed trains the shipped built-in model (`g2rpo_fast/models/builtin/`, loaded with
transformers) with `trl.GRPOTrainer` on the training problems `g2rpo-fast demo --regime hard`
uses for that seed (the built-in task's 4-digit split), with the hard preset's settings in
TRL's names: completions per step (`per_device_train_batch_size`), `num_generations`,
`max_completion_length`, `temperature`, `beta`, `epsilon`, `loss_type`, `scale_rewards`,
`learning_rate`, warm-up and schedule, `max_grad_norm`, AdamW's betas and weight decay,
`max_steps`, and the accuracy reward (`g2rpo_fast.rewards.accuracy_reward`, TRL's signature).
TRL has no guidance, no skipping of zero-signal steps and its own prompt order; it generates
with `model.generate`. The trained policy is then scored by this package's evaluator on the
same held-out prompts as the demo (greedy, and sampled at the training temperature with the
run's seed), so the row compares with the demo's GRPO row.

    OMP_NUM_THREADS=1 nohup nice -n 5 .venv/bin/python benchmarks/trl_hard_regime.py --seeds 0 1 2 \\
        --jobs 2 --out benchmarks/results/trl_hard_regime.md
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
from g2rpo_fast.seed_stats import mean_ci
from g2rpo_fast.trainer.config import G2RPOConfig


def base_config(max_steps=None, learning_rate=None) -> G2RPOConfig:
    preset, budget = REGIMES["hard"]
    overrides = {**budget, "guidance_schedule": "none", "progress_bar": False, "plots": False, "save_steps": 0,
                 "overwrite_output_dir": True}
    if max_steps:
        overrides["max_steps"] = max_steps
    if learning_rate:
        overrides["learning_rate"] = learning_rate
    return G2RPOConfig.from_yaml(preset, **overrides)


def run_trl(cfg: G2RPOConfig, work: str, threads: int) -> dict:
    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from g2rpo_fast.data.sources import load_split
    from g2rpo_fast.models.builtin import load_builtin_model
    from g2rpo_fast.rewards import accuracy_reward
    from g2rpo_fast.trainer.trainer import G2RPOTrainer

    torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    model, tokenizer = load_builtin_model()
    model.train()
    train = load_split(cfg, cfg.dataset_split, train=True)  # the demo's training problems for this seed
    out = os.path.join(work, f"trl-seed{cfg.seed}")
    args = GRPOConfig(
        output_dir=out, per_device_train_batch_size=cfg.per_device_train_batch_size,
        num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, beta=cfg.beta, epsilon=cfg.epsilon,
        loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards, num_iterations=cfg.num_iterations,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_steps,
        max_grad_norm=cfg.max_grad_norm, adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2,
        weight_decay=cfg.weight_decay, max_steps=cfg.max_steps, gradient_accumulation_steps=1, seed=cfg.seed,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False, fp16=False,
        disable_tqdm=True, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy_reward], args=args, train_dataset=train,
                          processing_class=tokenizer)
    steps = []

    class Log(TrainerCallback):
        def on_log(self, _args, _state, _control, logs=None, **_):
            if logs and "reward" in logs:
                steps.append({k: logs.get(k) for k in ("reward", "frac_reward_zero_std", "loss")})

    trainer.add_callback(Log())
    trainer.train()
    trainer.save_model(os.path.join(out, "final"))
    train_seconds = time.perf_counter() - t0
    # the demo's evaluation: this package's evaluator on the trained weights, same prompts and seeds
    eval_cfg = dataclasses.replace(cfg, model_name_or_path=os.path.join(out, "final"), output_dir=out)
    final = G2RPOTrainer(eval_cfg)._final_evaluation()
    return {"seed": cfg.seed, "eval_accuracy": final["eval_accuracy"],
            "eval_sampled_accuracy": final["eval_sampled_accuracy"], "eval_count": final["eval_count"],
            "steps": steps, "train_seconds": train_seconds, "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-steps", type=int, default=None, help="default: the hard regime's demo budget")
    ap.add_argument("--learning-rate", type=float, default=None, help="default: the hard preset's")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (results depend on it)")
    ap.add_argument("--work", default=os.path.join("scratch", "trl_hard"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    base = base_config(args.max_steps, args.learning_rate)
    configs = [dataclasses.replace(base, seed=s) for s in args.seeds]
    t0, load_before, date = time.perf_counter(), os.getloadavg(), datetime.date.today().isoformat()
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
        runs = list(pool.map(run_trl, configs, [args.work] * len(configs), [args.threads] * len(configs)))
    start_cfg = dataclasses.replace(base, output_dir=os.path.join(args.work, "start"))
    from g2rpo_fast.demo import _evaluate_start

    start = _evaluate_start(start_cfg, args.threads)
    seconds, load_after = time.perf_counter() - t0, os.getloadavg()
    from importlib.metadata import version

    load = lambda x: "/".join(f"{v:.1f}" for v in x)
    fmt = lambda pair: f"{pair[0]:.3f} ± {pair[1]:.3f}"
    greedy = [r["eval_accuracy"] for r in runs]
    sampled = [r["eval_sampled_accuracy"] for r in runs]
    zero = [sum(s["frac_reward_zero_std"] for s in r["steps"]) / max(len(r["steps"]), 1) for r in runs]
    lines = [
        "# TRL `GRPOTrainer` in the hard regime (the demo's GRPO, run by TRL)", "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '<unset>')} python "
        f"benchmarks/trl_hard_regime.py {' '.join(sys.argv[1:])}` ({date}).", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs (load average "
        f"{load(load_before)} before, {load(load_after)} after); {args.jobs} runs at a time, {args.threads} torch "
        f"thread(s) per run; wall time {seconds:.0f} s. trl {version('trl')}, transformers "
        f"{version('transformers')}.", "",
        f"Settings (the `hard` preset's, in TRL's names): the shipped built-in model, 4-digit sums, "
        f"{base.max_steps} steps x {base.per_device_train_batch_size} completions (G = {base.num_generations}), "
        f"max {base.max_completion_length} completion tokens, T = {base.temperature}, beta {base.beta}, "
        f"loss {base.loss_type}, lr {base.learning_rate} ({base.lr_scheduler_type}, {base.warmup_steps} warm-up "
        f"steps), max_grad_norm {base.max_grad_norm}, AdamW betas ({base.adam_beta1}, {base.adam_beta2}), accuracy "
        f"reward, no guidance, no skipping of zero-signal steps. Held-out: this package's evaluator, "
        f"{base.embedded_eval_size} prompts, greedy and {base.eval_num_samples} samples at T = {base.temperature}. "
        f"Before training: greedy {start['eval_accuracy']:.3f}, sampled {start['eval_sampled_accuracy']:.3f}.", "",
        "| trainer | held-out greedy (mean ± 95 % CI) | seeds | held-out sampled | seeds | zero-std groups |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| TRL GRPOTrainer (GRPO) | {fmt(mean_ci(greedy))} | {' / '.join(f'{v:.3f}' for v in greedy)} | "
        f"{fmt(mean_ci(sampled))} | {' / '.join(f'{v:.3f}' for v in sampled)} | {sum(zero) / len(zero):.2f} |",
    ]
    emit(lines, args.out)
    if args.out:
        with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
            json.dump({"date": date, "start": start, "seconds": seconds, "runs": runs}, fh, indent=1)


if __name__ == "__main__":
    main()
