"""PNG plots of the training curves (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import os

# (title, metrics drawn on that panel); a metric a run does not log is left out of its panel.
PANELS = (("reward", ("reward",)), ("accuracy (guidance reward)", ("accuracy",)),
          ("guidance length ℓ", ("guidance_length", "guidance_length_injected")),
          ("advantage std", ("advantage_std",)),
          ("groups with equal rewards", ("frac_reward_zero_std", "frac_groups_all_zero", "frac_groups_all_one")),
          ("reward of guided / unguided samples", ("reward_guided", "reward_unguided")))


def plot_metrics(history: list[dict], output_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return []
    steps = [m["step"] for m in history]
    paths = []
    fig, axes = plt.subplots(2, 3, figsize=(15, 7))
    for ax, (title, keys) in zip(axes.flat, PANELS):
        for key in keys:
            values = [m.get(key) for m in history]
            if all(v is None for v in values):
                continue
            ax.plot(steps, [float("nan") if v is None else v for v in values], marker=".", label=key)
        if len(keys) > 1:
            ax.legend(fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(output_dir, "training_curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
    return paths
