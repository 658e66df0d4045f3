"""The built-in tiny policy: char tokenizer, tiny Qwen3, warm start.

Attributes are resolved lazily so ``python -m g2rpo_fast.models.warmstart`` runs cleanly and
importing the package pulls in neither torch nor transformers.
"""
import importlib

_LAZY = {
    "build_tiny_model": "g2rpo_fast.models.tiny",
    "tiny_qwen3_config": "g2rpo_fast.models.tiny",
    "build_char_tokenizer": "g2rpo_fast.models.tokenizer",
    "EMBEDDED_MODEL_NAME": "g2rpo_fast.models.warmstart",
    "is_embedded": "g2rpo_fast.models.warmstart",
    "load_embedded_default": "g2rpo_fast.models.warmstart",
}
__all__ = list(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'g2rpo_fast.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
