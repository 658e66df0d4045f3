"""PEFT adapters on the policy (TRL's `peft_config`): wrapping, checkpoints and export.

With adapters the trainer keeps two handles on one set of weights: the `PeftModel` (saving,
loading, disabling the adapters) and the transformers model inside it
(`PeftModel.get_base_model()`), whose LoRA modules the packed training forward, the loss and the
roll-out engine call like any layer: the adapters are applied wherever the model runs (in the
engine too: as fast as merging them for each generate call, or faster, and the base weights never
move; benchmarks/results/lora_rollout_cpu.md), and only their parameters have `requires_grad`
(the optimizer takes only those). A checkpoint holds the
adapter (`adapter_model.safetensors`, `adapter_config.json`), not the base weights;
`g2rpo-fast export` (checkpointing/export.py) loads the base model and merges the adapter into it.
peft is an optional dependency (extra `peft`).
"""
from __future__ import annotations

import os


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None))


def _peft(field: str):
    try:
        import peft
    except ImportError:
        raise ValueError(f"`{field}`: adapters need the peft package (pip install peft, or g2rpo_fast[peft])") \
            from None
    return peft


def wrap_with_adapters(model, peft_config, seed: int):
    """`peft.get_peft_model(model, peft_config)`, its adapter initialised from `seed` (without
    touching the global RNG). A model that already has adapters is refused, as TRL does."""
    import torch

    peft = _peft("peft_config")
    if not isinstance(peft_config, peft.PeftConfig):
        raise ValueError(f"`peft_config` must be a peft.PeftConfig (e.g. peft.LoraConfig), got "
                         f"{type(peft_config).__name__}")
    if is_peft_model(model):
        raise ValueError("`peft_config`: the model already has adapters (a PeftModel); pass it without peft_config "
                         "to train its adapters, or merge them (merge_and_unload) first")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return peft.get_peft_model(model, peft_config)


def adapters_disabled(peft_model):
    """A context factory: the base model's forward (the reference policy of fresh adapters)."""
    return peft_model.disable_adapter


def load_adapter_weights(peft_model, path: str) -> None:
    """The adapter saved in a checkpoint into `peft_model` (its active adapter)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    file = os.path.join(path, "adapter_model.safetensors")
    if not os.path.isfile(file):
        raise ValueError(f"checkpoint {path} holds no adapter (adapter_model.safetensors): it was not saved by a run "
                         f"with adapters")
    result = set_peft_model_state_dict(peft_model, load_file(file))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(f"checkpoint {path}: its adapter does not match this model's (unexpected {unexpected[:3]})")
