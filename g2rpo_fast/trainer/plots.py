"""PNG plots of the training curves (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import os

PLOTTED = (("reward", "reward"), ("accuracy", "accuracy (guidance reward)"),
           ("guidance_length", "guidance length ℓ"), ("advantage_std", "advantage std"))


def plot_metrics(history: list[dict], output_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return []
    steps = [m["step"] for m in history]
    paths = []
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (key, title) in zip(axes.flat, PLOTTED):
        values = [m.get(key) for m in history]
        ax.plot(steps, [float("nan") if v is None else v for v in values], marker=".")
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(output_dir, "training_curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
    return paths
