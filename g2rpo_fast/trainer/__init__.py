"""The G²RPO-A trainer: `G2RPOConfig`, `G2RPOTrainer`, guided group composition, checkpoints."""
from .config import G2RPOConfig


def __getattr__(name):
    if name == "G2RPOTrainer":
        from .trainer import G2RPOTrainer

        return G2RPOTrainer
    raise AttributeError(f"module 'g2rpo_fast.trainer' has no attribute {name!r}")


__all__ = ["G2RPOConfig", "G2RPOTrainer"]
