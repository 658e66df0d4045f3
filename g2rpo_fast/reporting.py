"""Where a run's logged metrics go besides metrics.jsonl: `report_to` (TRL's name).

- `tensorboard`: every finite numeric metric as a scalar, tagged with its metrics.jsonl key,
  under `<output_dir>/runs/` (`runs/<run_name>/` with a run name); on resume the events past the
  checkpoint are dropped, as metrics.jsonl is cut.
- `wandb`: `wandb.init(project=$WANDB_PROJECT or "huggingface", name=run_name, config=...)` as
  transformers' integration does; `WANDB_MODE=offline` writes the run under `<output_dir>/wandb/`
  without a network (`wandb sync` uploads it later). Completion tables (`log_completions`) go
  there too.
The trainer's rank 0 owns one `Reporters`; nothing here knows the training loop.
"""
from __future__ import annotations

import math
import os


def numeric(metrics: dict) -> dict:
    """The finite numbers of `metrics` (no bools, no None, no NaN), `step` excluded."""
    return {k: float(v) for k, v in metrics.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class Reporters:
    def __init__(self, targets, output_dir: str, run_name: str | None = None, config: dict | None = None,
                 initial_step: int = 0):
        self.tensorboard = self.wandb = None
        if "tensorboard" in targets:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = os.path.join(output_dir, "runs", *([run_name] if run_name else []))
            self.tensorboard = SummaryWriter(log_dir=log_dir, purge_step=initial_step + 1 if initial_step else None)
        if "wandb" in targets:
            import wandb

            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT") or "huggingface", name=run_name,
                                    config=config, dir=output_dir, reinit="create_new")

    def log(self, step: int, metrics: dict) -> None:
        values = numeric(metrics)
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, global_step=step)
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def log_table(self, step: int, name: str, rows: list[dict]) -> None:
        """A table of rows (same keys) to wandb; TensorBoard has no tables (completions.jsonl has them)."""
        if self.wandb is not None and rows:
            import wandb

            columns = list(rows[0])
            self.wandb.log({name: wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])},
                           step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
