"""G²RPO-A inside TRL: `GuidedGRPOTrainer(trl.GRPOTrainer)` and `GuidedGRPOConfig(trl.GRPOConfig)`.

A TRL user switches by changing the trainer class and adding the guidance fields::

    from g2rpo_fast.integrations.trl import GuidedGRPOConfig, GuidedGRPOTrainer

    args = GuidedGRPOConfig(output_dir="out", guidance_ratio=0.25, guidance_field="solution",
                            use_g2rpo_loss=True)
    GuidedGRPOTrainer(model="Qwen/Qwen3-1.7B", reward_funcs=[accuracy], args=args,
                      train_dataset=dataset).train()

Generation (transformers, vLLM colocate or server), accelerate, DeepSpeed and FSDP stay TRL's.
trl is an optional extra (``pip install 'g2rpo_fast[trl]'``): this package imports without it,
and the two names import trl when they are first used.

What this relies on in TRL (tested with trl 1.16.0; ``tests/test_integrations_trl*.py`` pin the
behaviour): the methods it overrides — ``_generate_and_score_completions`` (one generated batch:
guidance in, guidance mask and ℓ update out), ``_generate_single_turn`` (prompt token ids in,
completion ids and sampling log-probs out, for all three generation paths),
``_calculate_rewards`` (the rewards gathered over processes), ``_compute_loss``,
``_save_checkpoint`` / ``_load_optimizer_and_scheduler``; and the attributes ``_tokenizer``,
``_metrics``, ``reward_weights``, ``reward_func_names``, ``num_generations`` and the batch
dict's keys (``prompt_ids``, ``completion_ids``, ``completion_mask``, ``tool_mask``,
``advantages``, ``num_items_in_batch``, ``old_per_token_logps``, ``ref_per_token_logps``,
``importance_sampling_ratio``). The trainer checks at construction that the methods exist.
"""
from __future__ import annotations

import importlib

_LAZY = {"GuidedGRPOConfig": ".config", "GuidedGRPOTrainer": ".trainer"}
__all__ = list(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(_LAZY[name], __name__)
    except ModuleNotFoundError as exc:
        if exc.name not in ("trl", "accelerate"):
            raise
        raise ImportError(f"{name} subclasses TRL's GRPO classes, and {exc.name} is not installed: "
                          "pip install 'g2rpo_fast[trl]'") from exc
    value = getattr(module, name)
    globals()[name] = value
    return value
