"""Learning-rate sweep of a demo regime: learning rate x method x seeds, held-out accuracy.

Each run is the regime's preset and demo budget (`g2rpo_fast.demo.REGIMES`) with one learning
rate and one method (`demo.METHOD_CONFIG`), trained on the shipped built-in model and scored on
the held-out split (greedy, and sampled at the training temperature), like `g2rpo-fast demo`.
The table gives each (lr, method) cell's mean ± 95 % t interval over the seeds, the seeds'
values, and how many seeds ended below the untrained model (the common start). The preset's
learning rate (configs/default.yaml, hard.yaml) is picked from this table.

    OMP_NUM_THREADS=1 nohup nice -n 5 .venv/bin/python benchmarks/lr_sweep.py --regime hard \\
        --lrs 1e-4 3e-5 1e-5 3e-6 --methods none adaptive --seeds 0 1 2 --jobs 2 \\
        --out benchmarks/results/lr_sweep_hard.md

Runs go to `--work` (`--resume` reuses identical finished runs there); `<out>.json` keeps every
run's summary and curves.
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

from g2rpo_fast.demo import METHOD_LABELS, REGIMES, run_configs, run_many
from g2rpo_fast.seed_stats import mean_ci
from g2rpo_fast.trainer.config import G2RPOConfig


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regime", choices=list(REGIMES), default="hard")
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-5, 1e-5, 3e-6])
    ap.add_argument("--methods", nargs="+", default=["none", "adaptive"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-steps", type=int, default=None, help="default: the regime's demo budget")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (results depend on it)")
    ap.add_argument("--work", default=None, help="run directories (default: scratch/lr_sweep_<regime>)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    preset, budget = REGIMES[args.regime]
    if args.max_steps:
        budget = {**budget, "max_steps": args.max_steps}
    base = G2RPOConfig.from_yaml(preset, **budget)
    work = args.work or os.path.join("scratch", f"lr_sweep_{args.regime}")
    runs = []
    for lr in args.lrs:
        cfg = dataclasses.replace(base, learning_rate=lr)
        runs += [(m, c) for m, c in run_configs(cfg, args.methods, args.seeds, os.path.join(work, f"lr{lr:g}"))]
    start_cfg = dataclasses.replace(runs[0][1], guidance_schedule="none", dynamic_sampling=False,
                                    output_dir=os.path.join(work, "start"))
    done = []

    def report(run):
        done.append(run)
        lr = run["config"]["learning_rate"]
        print(f"[sweep] lr {lr:g} {run['method']} seed {run['seed']}: greedy {run['eval_accuracy']:.3f} sampled "
              f"{run['eval_sampled_accuracy']:.3f} skipped {run['steps_skipped']} {run['seconds']:.0f} s", flush=True)

    t0, load_before, date = time.perf_counter(), os.getloadavg(), datetime.date.today().isoformat()
    start = run_many(runs, args.jobs, args.threads, args.resume, report, start_cfg=start_cfg)
    seconds, load_after = time.perf_counter() - t0, os.getloadavg()
    load = lambda x: "/".join(f"{v:.1f}" for v in x)
    lines = [
        f"# Learning-rate sweep, {args.regime} regime", "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '<unset>')} python benchmarks/lr_sweep.py "
        f"{' '.join(sys.argv[1:])}` ({date}).", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs (load average "
        f"{load(load_before)} before, {load(load_after)} after); {args.jobs} runs at a time, {args.threads} torch "
        f"thread(s) per run (training on the CPU depends on the thread count); wall time {seconds:.0f} s, the runs' "
        f"CPU time {sum(r['cpu_seconds'] for r in done):.0f} s.", "",
        f"Each run: the `{preset}` preset with the demo budget ({base.max_steps} steps x "
        f"{base.per_device_train_batch_size} completions, G = {base.num_generations}, "
        f"skip_zero_signal_steps {base.skip_zero_signal_steps}), the shipped built-in model, "
        f"{base.embedded_eval_size} held-out prompts (greedy, and {base.eval_num_samples} samples per prompt at "
        f"T = {base.temperature}). Before training: greedy {start['eval_accuracy']:.3f}, sampled "
        f"{start['eval_sampled_accuracy']:.3f}.", "",
        "| lr | method | held-out greedy (mean ± 95 % CI) | seeds | below start | held-out sampled | seeds | "
        "below start | steps skipped |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for lr in args.lrs:
        for method in args.methods:
            cell = sorted((r for r in done if r["method"] == method and r["config"]["learning_rate"] == lr),
                          key=lambda r: r["seed"])
            g = [r["eval_accuracy"] for r in cell]
            s = [r["eval_sampled_accuracy"] for r in cell]
            fmt = lambda pair: f"{pair[0]:.3f} ± {pair[1]:.3f}"
            lines.append(
                f"| {lr:g} | {METHOD_LABELS[method]} | {fmt(mean_ci(g))} | {' / '.join(f'{v:.3f}' for v in g)} | "
                f"{sum(v < start['eval_accuracy'] for v in g)}/{len(g)} | {fmt(mean_ci(s))} | "
                f"{' / '.join(f'{v:.3f}' for v in s)} | {sum(v < start['eval_sampled_accuracy'] for v in s)}/{len(s)} "
                f"| {sum(r['steps_skipped'] for r in cell) / max(len(cell), 1):.1f} |")
    emit(lines, args.out)
    if args.out:
        with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
            json.dump({"start": start, "date": date, "seconds": seconds, "runs": done}, fh)


if __name__ == "__main__":
    main()
