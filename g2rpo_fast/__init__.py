"""g2rpo_fast: fused kernels, a packed roll-out engine and a trainer for G2RPO-A."""
import importlib

__version__ = "0.1.0"

# Lazy attributes keep `import g2rpo_fast` cheap and let users import one piece
# (the loss, the kernels, the engine) without pulling in the rest.
_LAZY = {
    "ops": ("g2rpo_fast.ops", None),
    "G2RPOLoss": ("g2rpo_fast.loss", "G2RPOLoss"),
    "FusedLinearG2RPOLoss": ("g2rpo_fast.loss", "FusedLinearG2RPOLoss"),
    "AdaptiveGuidance": ("g2rpo_fast.guidance", "AdaptiveGuidance"),
    "G2RPOConfig": ("g2rpo_fast.trainer.config", "G2RPOConfig"),
    "G2RPOTrainer": ("g2rpo_fast.trainer.trainer", "G2RPOTrainer"),
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'g2rpo_fast' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value
