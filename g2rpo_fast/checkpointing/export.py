"""`g2rpo-fast export <checkpoint> <out_dir>`: a checkpoint as a Hugging Face model directory.

A sharded (FSDP) checkpoint's weights live in DCP shards; this reads them in one process (DCP
reassembles the shards of any world size), builds the model from the checkpoint's `config.json`
and writes `save_pretrained` + the tokenizer. A single-process/DDP checkpoint is already in that
format and is loaded and written the same way. The checkpoint must verify (its manifest) first.
"""
from __future__ import annotations

import os

from .manifest import verify_checkpoint
from .sharded_checkpoint import DCP_DIR, is_sharded_checkpoint


def export_checkpoint(checkpoint: str, out_dir: str) -> str:
    """Write `checkpoint`'s model and tokenizer to `out_dir` (HF format); returns `out_dir`.
    A checkpoint that does not verify is a `ValueError` saying why."""
    reason = verify_checkpoint(checkpoint)
    if reason is not None:
        raise ValueError(f"`checkpoint`: {checkpoint} is not a complete checkpoint: {reason}")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ValueError(f"`out_dir`: {out_dir} exists and is not an empty directory")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if is_sharded_checkpoint(checkpoint):
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
