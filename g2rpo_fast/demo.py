"""`g2rpo-fast demo`: GRPO, DAPO's dynamic sampling and four guidance schedules, over seeds.

Methods (`METHODS`), each the regime's preset with one change (`METHOD_CONFIG`): GRPO (no
guidance), DAPO's dynamic sampling (no guidance; groups without signal are dropped and more
prompts are drawn: it generates more completions than the others, which the table says), fixed
guidance, linear decay, G²RPO-A (the paper's adaptive rule) and `adaptive_sparse` (the rule's
variant for sparse rewards, `guidance.py`). Every method runs on the same seeds, so the runs
are paired: seed s of every method starts from the same model and sees the same prompts (DAPO:
the same first prompts of each step). After training each policy is scored on the held-out
split, greedy and sampled at the training temperature.

Two regimes (`REGIMES`): `easy` (3-digit sums, rewards mid-range) and `hard` (4-digit sums, the
built-in model right in about 1 % of its samples: most groups all-wrong). Writes
`demo_results.md` (mean ± 95 % confidence interval over seeds, and each method against GRPO seed
by seed: `seed_stats.py`), `demo_results.json` (every run's summary and curves) and `demo.png`.
`jobs > 1` runs that many runs at once, one process each, each with `threads` torch threads
(default: the cores divided by the jobs); training on the CPU depends on the thread count, so
the table states it. `resume` reuses the runs of an earlier demo in the same output directory
whose configuration is identical (a run's summary is `<method>-seed<s>/demo_run.json`).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time

import numpy as np

from g2rpo_fast.seed_stats import holm, mean_ci, paired_comparison

METHODS = ("none", "dapo", "fixed", "linear", "adaptive", "adaptive_sparse")
METHOD_LABELS = {"none": "GRPO (no guidance)", "dapo": "DAPO dynamic sampling", "fixed": "fixed guidance",
                 "linear": "linear decay", "adaptive": "G²RPO-A (adaptive)",
                 "adaptive_sparse": "adaptive_sparse (variant)"}
METHOD_CONFIG = {"none": {"guidance_schedule": "none"},
                 "dapo": {"guidance_schedule": "none", "dynamic_sampling": True},
                 "fixed": {"guidance_schedule": "fixed"}, "linear": {"guidance_schedule": "linear"},
                 "adaptive": {"guidance_schedule": "adaptive"},
                 "adaptive_sparse": {"guidance_schedule": "adaptive_sparse"}}
DEFAULT_SEEDS = tuple(range(8))
# regime -> (packaged config preset, demo budget overrides unless the user chose them)
REGIMES = {"easy": ("default", {"max_steps": 60, "embedded_eval_size": 256}),
           "hard": ("hard", {"embedded_eval_size": 256})}
CURVES = ("reward", "accuracy", "sampled_accuracy", "accuracy_unguided", "advantage_std", "guidance_length",
          "guidance_length_injected", "frac_reward_zero_std", "sampled_frac_reward_zero_std", "frac_groups_all_zero",
          "frac_groups_all_one", "reward_guided", "reward_unguided", "sampling_rounds", "steps_skipped")
RUN_FILE = "demo_run.json"


def _quarter_mean(values, last: bool) -> float:
    k = max(1, len(values) // 4)
    return float(np.mean(values[-k:] if last else values[:k]))


def _run_one(method: str, cfg, threads: int) -> dict:
    """Train and evaluate one (method, seed) run; its summary and curves (also written to
    `<output_dir>/demo_run.json`)."""
    import torch

    from g2rpo_fast.trainer.trainer import G2RPOTrainer

    torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer = G2RPOTrainer(cfg)
    history = trainer.train()
    final = getattr(trainer, "final_eval", {}) or {}
    acc = [m["sampled_accuracy"] for m in history]
    run = {"method": method, "seed": int(cfg.seed), "threads": threads, "config": cfg.to_dict(),
           "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
           "eval_accuracy": final.get("eval_accuracy"), "eval_sampled_accuracy": final.get("eval_sampled_accuracy"),
           "eval_count": final.get("eval_count"),
           "train_accuracy_first": _quarter_mean(acc, last=False), "train_accuracy_last": _quarter_mean(acc, last=True),
           "final_advantage_std": _quarter_mean([m["advantage_std"] for m in history], last=True),
           "mean_frac_reward_zero_std": float(np.mean([m["sampled_frac_reward_zero_std"] for m in history])),
           "completions_generated": int(sum(m["sampled_groups"] for m in history) * cfg.num_generations),
           "steps_skipped": int(history[-1]["steps_skipped"]), "final_guidance_length": history[-1]["guidance_length"],
           "curves": {k: [m.get(k) for m in history] for k in CURVES}}
    with open(os.path.join(cfg.output_dir, RUN_FILE), "w", encoding="utf-8") as fh:
        json.dump(run, fh)
    return run


def _evaluate_start(cfg, threads: int) -> dict:
    """Held-out accuracy of the policy before any training (the common starting point)."""
    import torch

    from g2rpo_fast.trainer.trainer import G2RPOTrainer

    torch.set_num_threads(threads)
    final = G2RPOTrainer(cfg)._final_evaluation()
    return {"eval_accuracy": final.get("eval_accuracy"), "eval_sampled_accuracy": final.get("eval_sampled_accuracy"),
            "eval_count": final.get("eval_count")}


def _earlier_run(cfg, threads: int):
    """The summary of an identical run (same config and thread count) already in its directory."""
    path = os.path.join(cfg.output_dir, RUN_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        run = json.load(fh)
    return run if run.get("config") == json.loads(json.dumps(cfg.to_dict())) and run.get("threads") == threads \
        else None


def run_configs(config, methods, seeds, output_dir):
    """(method, config) of every run, seed after seed (so a partial demo holds paired runs)."""
    out = []
    for seed in seeds:
        for method in methods:
            out.append((method, dataclasses.replace(
                config, **METHOD_CONFIG[method], seed=int(seed), progress_bar=False, plots=False, save_steps=0,
                eval_at_end=True, overwrite_output_dir=True,
                # each demo run replaces the same run of an earlier demo in output_dir
                output_dir=os.path.join(output_dir, f"{method}-seed{seed}"))))
    return out


def run_many(runs, jobs: int, threads: int, resume: bool, report, start_cfg=None):
    """Train and evaluate every `(method, config)` of `runs`, `jobs` at a time (one process
    each, `threads` torch threads), calling `report(summary)` as each finishes (in order);
    with `resume`, an identical earlier run is reported from its file instead (`reused`: true).
    Returns the evaluation of `start_cfg`'s untrained policy when given."""
    todo = []
    for method, cfg in runs:
        earlier = _earlier_run(cfg, threads) if resume else None
        if earlier is not None:
            report({**earlier, "reused": True})
        else:
            todo.append((method, cfg))
    start = None
    if jobs <= 1:
        start = _evaluate_start(start_cfg, threads) if start_cfg is not None else None
        for method, cfg in todo:
            report(_run_one(method, cfg, threads))
        return start
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        pending = pool.submit(_evaluate_start, start_cfg, threads) if start_cfg is not None else None
        for run in pool.map(_run_one, [m for m, _ in todo], [c for _, c in todo], [threads] * len(todo)):
            report(run)
        return pending.result() if pending is not None else None


def run_demo(config, seeds=DEFAULT_SEEDS, methods=METHODS, output_dir="g2rpo_demo", jobs: int = 1,
             regime: str | None = None, threads: int | None = None, resume: bool = False,
             command: str | None = None) -> dict:
    os.makedirs(output_dir, exist_ok=True)
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    runs = run_configs(config, methods, seeds, output_dir)
    start_cfg = dataclasses.replace(runs[0][1], guidance_schedule="none", dynamic_sampling=False,
                                    output_dir=os.path.join(output_dir, "start"))
    results: dict[str, list[dict]] = {m: [] for m in methods}
    t_all, load_before = time.perf_counter(), os.getloadavg()

    def report(run):
        results[run["method"]].append(run)
        print(f"[demo] {METHOD_LABELS[run['method']]} seed {run['seed']}: held-out greedy {run['eval_accuracy']}, "
              f"sampled {run['eval_sampled_accuracy']}, train accuracy {run['train_accuracy_first']:.3f} -> "
              f"{run['train_accuracy_last']:.3f}, zero-std groups {run['mean_frac_reward_zero_std']:.2f}, "
              f"steps skipped {run['steps_skipped']}, {run['seconds']:.0f} s", flush=True)

    start = run_many(runs, jobs, threads, resume, report, start_cfg=start_cfg)
    print(f"[demo] before training: held-out greedy {start['eval_accuracy']}, sampled "
          f"{start['eval_sampled_accuracy']}", flush=True)
    for method_runs in results.values():
        method_runs.sort(key=lambda r: r["seed"])
    timing = {"seconds": time.perf_counter() - t_all, "jobs": jobs, "threads": threads, "command": command,
              "date": datetime.date.today().isoformat(),
              "load_before": load_before, "load_after": os.getloadavg(),
              "runs_reused": sum(r.get("reused", False) for rs in results.values() for r in rs),
              "cpu_seconds_of_runs": sum(r["cpu_seconds"] for rs in results.values() for r in rs)}
    summary = summarise(results, start)
    _write_table(summary, start, config, seeds, timing, output_dir, regime)
    with open(os.path.join(output_dir, "demo_results.json"), "w", encoding="utf-8") as fh:
        json.dump({"regime": regime, "timing": timing, "config": config.to_dict(), "start": start,
                   "summary": summary, "runs": results}, fh, indent=2)
    _plot(results, start, os.path.join(output_dir, "demo.png"), regime)
    return results


def summarise(results: dict, start: dict) -> dict:
    """Per method: mean ± 95 % CI of the held-out accuracies (greedy, sampled) and the other
    columns; against GRPO (`none`) seed by seed where both ran the same seeds, with Holm's
    adjustment over the methods compared."""
    out = {}
    for method, runs in results.items():
        row = {"seeds": [r["seed"] for r in runs]}
        for key in ("eval_accuracy", "eval_sampled_accuracy", "completions_generated", "mean_frac_reward_zero_std",
                    "steps_skipped", "train_accuracy_first", "train_accuracy_last", "final_guidance_length",
                    "final_advantage_std"):
            row[key] = mean_ci([r[key] for r in runs])
        out[method] = row
    base = {r["seed"]: r for r in results.get("none", [])}
    compared = [m for m, runs in results.items() if m != "none" and runs and all(r["seed"] in base for r in runs)]
    for key in ("eval_accuracy", "eval_sampled_accuracy"):
        tests = {}
        for method in compared:
            runs = results[method]
            values = [r[key] for r in runs] + [base[r["seed"]][key] for r in runs]
            if len(runs) >= 2 and all(v is not None for v in values):  # e.g. no sampled accuracy: not compared
                tests[method] = paired_comparison([r[key] for r in runs], [base[r["seed"]][key] for r in runs])
        for method, p in zip(tests, holm([t["p_t"] for t in tests.values()])):
            tests[method]["p_holm"] = p
            out[method][f"vs_grpo_{key}"] = tests[method]
    return out


def _ci(pair, digits=3) -> str:
    mean, half = pair
    if mean is None or mean != mean:
        return "—"
    return f"{mean:.{digits}f}" if half != half else f"{mean:.{digits}f} ± {half:.{digits}f}"


def _verdict(test) -> str:
    if test["p_t"] >= 0.05:
        return "not significant"
    word = "higher" if test["diff"] > 0 else "lower"
    return f"**{word}** (p < 0.05{', also after Holm' if test['p_holm'] < 0.05 else '; not after Holm'})"


def _write_table(summary, start, config, seeds, timing, output_dir, regime) -> None:
    load = lambda x: "/".join(f"{v:.1f}" for v in x)
    reused = f"; {timing['runs_reused']} run(s) reused from an identical earlier demo" if timing["runs_reused"] else ""
    lines = [
        f"# g2rpo-fast demo{f' ({regime} regime)' if regime else ''}: GRPO, DAPO dynamic sampling and guidance",
        "",
        f"Budget per run: {config.max_steps} optimizer steps x {config.per_device_train_batch_size} completions "
        f"(G={config.num_generations}), lr {config.learning_rate}, skip_zero_signal_steps "
        f"{config.skip_zero_signal_steps}, guidance_ratio {config.guidance_ratio}, "
        f"ℓ0={config.guidance_initial_length}, "
        f"ℓ in [{config.guidance_min_length}, {config.guidance_max_length}], window {config.guidance_window}, "
        f"update_every {config.guidance_update_every}, adaptive_sparse factor clamp {config.guidance_max_factor}, "
        f"DAPO at most {config.dynamic_sampling_max_rounds} generation rounds per step; seeds {list(seeds)}, "
        f"paired; model `{config.model_name_or_path}`, digits {config.embedded_difficulties}, "
        f"{config.embedded_eval_size} held-out prompts.",
        "",
        f"Command: `{timing['command'] or 'run_demo(...)'}` ({timing['date']}).",
        "",
        f"Wall time {timing['seconds']:.0f} s, {timing['jobs']} run(s) at a time, {timing['threads']} torch "
        f"thread(s) per run (results depend on it), load average {load(timing['load_before'])} before, "
        f"{load(timing['load_after'])} after; the runs' CPU time {timing['cpu_seconds_of_runs']:.0f} s"
        f"{reused}.",
        "",
        "Held-out accuracy: greedy, and sampled at the training temperature "
        f"({config.temperature}, {config.eval_num_samples} samples per prompt); mean ± half-width of the 95 % "
        "t interval over seeds. Zero-std groups: fraction of the generated groups whose rewards are all equal. "
        "Train accuracy: mean over every generated sample, first vs last quarter of the steps.",
        "",
        "| method | held-out greedy | held-out sampled | completions generated | zero-std groups | "
        "steps skipped | train accuracy first → last | final ℓ |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| before training (the common start) | {_ci((start['eval_accuracy'], float('nan')))} | "
        f"{_ci((start['eval_sampled_accuracy'], float('nan')))} | — | — | — | — | — |",
    ]
    for method, row in summary.items():
        lines.append(f"| {METHOD_LABELS[method]} | {_ci(row['eval_accuracy'])} | {_ci(row['eval_sampled_accuracy'])} | "
                     f"{row['completions_generated'][0]:.0f} | {row['mean_frac_reward_zero_std'][0]:.2f} | "
                     f"{row['steps_skipped'][0]:.1f} | {row['train_accuracy_first'][0]:.3f} → "
                     f"{row['train_accuracy_last'][0]:.3f} | {row['final_guidance_length'][0]:.1f} |")
    lines += ["", "Against GRPO, seed by seed (difference of held-out accuracy, method − GRPO, mean ± 95 % CI; "
              "p: paired t-test, exact sign-flip test; Holm: the t-test's p adjusted over the methods compared):",
              "", "| method | Δ greedy | p (t / sign-flip / Holm) | greedy | Δ sampled | p (t / sign-flip / Holm) | "
              "sampled |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for method, row in summary.items():
        g, s = row.get("vs_grpo_eval_accuracy"), row.get("vs_grpo_eval_sampled_accuracy")
        if g is None and s is None:
            continue
        cells = lambda t: ("—", "—", "—") if t is None else (
            _ci((t["diff"], t["ci"])), f"{t['p_t']:.3f} / {t['p_sign_flip']:.3f} / {t['p_holm']:.3f}", _verdict(t))
        lines.append(f"| {METHOD_LABELS[method]} | " + " | ".join(cells(g) + cells(s)) + " |")
    with open(os.path.join(output_dir, "demo_results.md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def _plot(results, start, path, regime=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("sampled_accuracy", "train accuracy (all samples)"),
            ("sampled_frac_reward_zero_std", "generated groups with zero reward std"),
            ("advantage_std", "advantage std"), ("guidance_length", "guidance length ℓ"))
    fig, axes = plt.subplots(1, 5, figsize=(24, 4))
    for k, (method, runs) in enumerate(results.items()):
        if not runs:
            continue
        label = METHOD_LABELS[method]
        for ax, (key, title) in zip(axes, keys):
            curves = np.array([[np.nan if v is None else v for v in r["curves"][key]] for r in runs], dtype=float)
            ax.plot(np.arange(1, curves.shape[1] + 1), np.nanmean(curves, axis=0), label=label)
            ax.set_title(title + " (mean over seeds)")
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
        acc = [r["eval_accuracy"] for r in runs]
        mean, half = mean_ci(acc)
        axes[4].scatter([k] * len(acc), acc, s=10, alpha=0.5)
        axes[4].errorbar([k], [mean], yerr=[0 if half != half else half], fmt="o", capsize=4, color="black")
    if start.get("eval_accuracy") is not None:
        axes[4].axhline(start["eval_accuracy"], color="grey", linestyle="--", label="before training")
        axes[4].legend()
    axes[4].set_xticks(range(len(results)), [METHOD_LABELS[m] for m in results], rotation=30, ha="right",
                       fontsize=7)
    axes[4].set_title("held-out greedy accuracy: seeds, mean ± 95 % CI")
    axes[0].legend(fontsize=7)
    if regime:
        fig.suptitle(f"{regime} regime")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
