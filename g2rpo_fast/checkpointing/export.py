"""`g2rpo-fast export <checkpoint> <out_dir>`: a checkpoint as a Hugging Face model directory.

A checkpoint of a run with adapters (LoRA) holds the adapter only: the base model its
adapter_config.json names is loaded and the adapter merged into it (peft's merge_and_unload).
A sharded (FSDP) checkpoint's weights live in DCP shards; this reads them in one process (DCP
reassembles the shards of any world size), builds the model from the checkpoint's `config.json`
and writes `save_pretrained` + the tokenizer. A single-process/DDP checkpoint is already in that
format and is loaded and written the same way. The checkpoint must verify (its manifest) first.
"""
from __future__ import annotations

import os

from .manifest import verify_checkpoint
from .sharded_checkpoint import DCP_DIR, is_sharded_checkpoint

ADAPTER_CONFIG = "adapter_config.json"  # peft's file: the checkpoint of a run with adapters


def export_checkpoint(checkpoint: str, out_dir: str) -> str:
    """Write `checkpoint`'s model and tokenizer to `out_dir` (HF format); returns `out_dir`.
    A checkpoint that does not verify is a `ValueError` saying why."""
    reason = verify_checkpoint(checkpoint)
    if reason is not None:
        raise ValueError(f"`checkpoint`: {checkpoint} is not a complete checkpoint: {reason}")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ValueError(f"`out_dir`: {out_dir} exists and is not an empty directory")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if os.path.isfile(os.path.join(checkpoint, ADAPTER_CONFIG)):  # a run with adapters: merge them
        model = merged_adapter_model(checkpoint)
    elif is_sharded_checkpoint(checkpoint):
        import warnings

        import torch.distributed.checkpoint as dcp

        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint)).float()
        state = {"model": model.state_dict()}
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, checkpoint_id=os.path.join(checkpoint, DCP_DIR))
        model.load_state_dict(state["model"])
    else:
        model = AutoModelForCausalLM.from_pretrained(checkpoint).float()
    model.save_pretrained(out_dir)
    if os.path.isfile(os.path.join(checkpoint, "tokenizer_config.json")):
        AutoTokenizer.from_pretrained(checkpoint).save_pretrained(out_dir)
    return out_dir


def merged_adapter_model(path: str):
    """The base model named in an adapter checkpoint, float32, with the adapter merged in."""
    import json

    try:
        from peft import PeftModel
    except ImportError:
        raise ValueError(f"`checkpoint`: {path} holds an adapter; merging it needs the peft package (pip install "
                         f"peft, or g2rpo_fast[peft])") from None
    from transformers import AutoModelForCausalLM

    with open(os.path.join(path, ADAPTER_CONFIG), encoding="utf-8") as fh:
        base = json.load(fh).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"`checkpoint`: {path} holds an adapter whose base model is not recorded (the model was "
                         f"built in memory, without a path): merge it with peft yourself")
    try:
        model = AutoModelForCausalLM.from_pretrained(base).float()
    except OSError as exc:
        raise ValueError(f"`checkpoint`: cannot load the adapter's base model {base}: {exc}") from None
    untie_adapted_head(model, path)
    return PeftModel.from_pretrained(model, path).merge_and_unload()


def untie_adapted_head(model, path: str) -> None:
    """An adapter on a tied lm_head (or on the embeddings) adapts that one module: merging it into
    the shared tensor would change the other too. Give the lm_head its own copy first."""
    import torch
    from safetensors import safe_open

    with safe_open(os.path.join(path, "adapter_model.safetensors"), "pt") as fh:
        touched = any(".lm_head." in k or ".embed_tokens." in k for k in fh.keys())
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if touched and head is not None and head.weight is embed.weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone())
        model.config.tie_word_embeddings = False
        if hasattr(model.config, "get_text_config"):
            model.config.get_text_config().tie_word_embeddings = False
