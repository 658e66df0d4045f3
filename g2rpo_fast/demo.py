"""`g2rpo-fast demo`: GRPO vs fixed guidance vs linear decay vs G²RPO-A, equal budgets, over seeds.

Each (method, seed) run uses the same config except `guidance_schedule` and `seed`, so every
method sees the same prompts, the same number of completions and optimizer steps. At the end
each run's policy is evaluated on the held-out split (greedy, and sampled at the training
temperature). Two regimes (`REGIMES`): `easy` (3-digit sums, rewards mid-range) and `hard`
(4-digit sums, the built-in model right in ~2 % of its samples: most groups all-wrong).
Writes `demo_results.md` (mean ± std over seeds), `demo_results.json` and `demo.png`
(training reward, fraction of zero-std groups, advantage std and guidance length per method,
mean over seeds). `jobs > 1` runs that many (method, seed) runs at once, one process each.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

METHOD_LABELS = {"none": "GRPO (no guidance)", "fixed": "fixed guidance", "linear": "linear decay",
                 "adaptive": "G²RPO-A (adaptive)"}
METHODS = ("none", "fixed", "linear", "adaptive")
# regime -> (packaged config preset, demo budget overrides unless the user chose them)
REGIMES = {"easy": ("default", {"max_steps": 100, "per_device_train_batch_size": 64}),
           "hard": ("hard", {})}
CURVES = ("reward", "accuracy", "accuracy_unguided", "advantage_std", "guidance_length", "guidance_length_injected",
          "frac_reward_zero_std", "frac_groups_all_zero", "frac_groups_all_one", "reward_guided",
          "reward_unguided")


def _mean_std(values):
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _run_one(cfg, threads: int = 0) -> dict:
    """Train and evaluate one (method, seed) config; its summary and curves."""
    import torch

    from g2rpo_fast.trainer.trainer import G2RPOTrainer

    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    trainer = G2RPOTrainer(cfg)
    history = trainer.train()
    final = getattr(trainer, "final_eval", {}) or {}
    tail = history[-max(1, len(history) // 4):]
    return {"method": cfg.guidance_schedule, "seed": int(cfg.seed), "seconds": time.perf_counter() - t0,
            "eval_accuracy": final.get("eval_accuracy"),
            "eval_sampled_accuracy": final.get("eval_sampled_accuracy"),
            "final_advantage_std": float(np.mean([m["advantage_std"] for m in tail])),
            "final_reward": float(np.mean([m["reward"] for m in tail])),
            "first_reward": history[0]["reward"],
            "mean_frac_reward_zero_std": float(np.mean([m["frac_reward_zero_std"] for m in history])),
            "curves": {k: [m.get(k) for m in history] for k in CURVES}}


def _evaluate_start(cfg, threads: int = 0) -> dict:
    """Held-out accuracy of the policy before any training (the common starting point)."""
    import torch

    from g2rpo_fast.trainer.trainer import G2RPOTrainer

    if threads:
        torch.set_num_threads(threads)
    final = G2RPOTrainer(cfg)._final_evaluation()
    return {"eval_accuracy": final.get("eval_accuracy"), "eval_sampled_accuracy": final.get("eval_sampled_accuracy")}


def run_demo(config, seeds=(0, 1, 2), methods=METHODS, output_dir="g2rpo_demo", jobs: int = 1,
             regime: str | None = None) -> dict:
    os.makedirs(output_dir, exist_ok=True)
    configs = [dataclasses.replace(config, guidance_schedule=method, seed=int(seed), progress_bar=False,
                                   plots=False, save_steps=0, eval_at_end=True, overwrite_output_dir=True,
                                   # each demo run replaces the same run of an earlier demo in output_dir
                                   output_dir=os.path.join(output_dir, f"{method}-seed{seed}"))
               for method in methods for seed in seeds]
    start_cfg = dataclasses.replace(configs[0], guidance_schedule="none", output_dir=os.path.join(output_dir, "start"))
    results: dict[str, list[dict]] = {m: [] for m in methods}
    t_all = time.perf_counter()

    def report(run):
        results[run["method"]].append(run)
        print(f"[demo] {METHOD_LABELS.get(run['method'], run['method'])} seed {run['seed']}: held-out greedy "
              f"{run['eval_accuracy']}, sampled {run['eval_sampled_accuracy']}, reward "
              f"{run['first_reward']:.3f} -> {run['final_reward']:.3f}, zero-std groups "
              f"{run['mean_frac_reward_zero_std']:.2f}, {run['seconds']:.0f} s", flush=True)

    if jobs <= 1:
        start = _evaluate_start(start_cfg)
        for cfg in configs:
            report(_run_one(cfg))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            pending_start = pool.submit(_evaluate_start, start_cfg, threads)
            for run in pool.map(_run_one, configs, [threads] * len(configs)):
                report(run)
            start = pending_start.result()
    print(f"[demo] before training: held-out greedy {start['eval_accuracy']}, sampled "
          f"{start['eval_sampled_accuracy']}", flush=True)
    for runs in results.values():
        runs.sort(key=lambda r: r["seed"])
    total = time.perf_counter() - t_all
    _write_table(results, start, config, seeds, total, output_dir, regime, jobs)
    with open(os.path.join(output_dir, "demo_results.json"), "w", encoding="utf-8") as fh:
        json.dump({"regime": regime, "jobs": jobs, "config": config.to_dict(), "seconds": total, "start": start,
                   "runs": results}, fh, indent=2)
    _plot(results, os.path.join(output_dir, "demo.png"), regime)
    return results


def _write_table(results, start, config, seeds, total, output_dir, regime, jobs) -> None:
    lines = [
        f"# g2rpo-fast demo{f' ({regime} regime)' if regime else ''}: GRPO vs guidance schedules vs G²RPO-A",
        "",
        f"Equal budgets: {config.max_steps} optimizer steps x {config.per_device_train_batch_size} completions "
        f"(G={config.num_generations}, guidance_ratio={config.guidance_ratio}, "
        f"ℓ0={config.guidance_initial_length}, ℓ in [{config.guidance_min_length}, {config.guidance_max_length}], "
        f"window {config.guidance_window}, update_every {config.guidance_update_every}), seeds {list(seeds)}, "
        f"model `{config.model_name_or_path}`, dataset `{config.dataset_name}` digits "
        f"{config.embedded_difficulties}. Total time {total:.0f} s ({jobs} run(s) at a time).",
        "",
        "Held-out accuracy: greedy, and sampled at the training temperature "
        f"({config.temperature}, {config.eval_num_samples} samples per prompt); mean ± std over seeds. "
        "Zero-std groups: fraction of groups whose rewards are all equal (no signal), mean over all steps. "
        "Final advantage std / train reward: mean over the last quarter of the steps, then over seeds.",
        "",
        "| method | held-out accuracy (greedy) | held-out accuracy (sampled) | zero-std groups | "
        "final advantage std | train reward first → final |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| before training (the common start) | {_fmt(start['eval_accuracy'])} | "
        f"{_fmt(start['eval_sampled_accuracy'])} | — | — | — |",
    ]
    for method, runs in results.items():
        g_m, g_s = _mean_std([r["eval_accuracy"] for r in runs])
        s_m, s_s = _mean_std([r["eval_sampled_accuracy"] for r in runs])
        z_m, _ = _mean_std([r["mean_frac_reward_zero_std"] for r in runs])
        a_m, _ = _mean_std([r["final_advantage_std"] for r in runs])
        f_m, _ = _mean_std([r["first_reward"] for r in runs])
        r_m, _ = _mean_std([r["final_reward"] for r in runs])
        lines.append(f"| {METHOD_LABELS.get(method, method)} | {g_m:.3f} ± {g_s:.3f} | {s_m:.3f} ± {s_s:.3f} | "
                     f"{z_m:.2f} | {a_m:.3f} | {f_m:.3f} → {r_m:.3f} |")
    with open(os.path.join(output_dir, "demo_results.md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def _plot(results, path, regime=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("reward", "train reward"), ("frac_reward_zero_std", "groups with zero reward std"),
            ("advantage_std", "advantage std"), ("guidance_length", "guidance length ℓ"))
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for method, runs in results.items():
        if not runs:
            continue
        for ax, (key, title) in zip(axes, keys):
            curves = np.array([[np.nan if v is None else v for v in r["curves"][key]] for r in runs], dtype=float)
            ax.plot(np.arange(1, curves.shape[1] + 1), np.nanmean(curves, axis=0),
                    label=METHOD_LABELS.get(method, method))
            ax.set_title(title + " (mean over seeds)")
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
    axes[0].legend()
    if regime:
        fig.suptitle(f"{regime} regime")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
