"""A run on disk: its output directory and checkpoints that are either complete or ignored.

- `run_dir.py`: the output directory, checked before anything loads (standard library only);
- `manifest.py`: the SHA-256 manifest that makes a checkpoint complete (standard library only);
- `checkpoint.py`: single-process / DDP checkpoints (`save_pretrained` + the trainer state),
  written atomically, found, verified and loaded on resume;
- `sharded_checkpoint.py`: FSDP checkpoints, every rank writing its shards (DCP);
- `export.py`: any checkpoint as a Hugging Face model directory (`g2rpo-fast export`).

Light on purpose: the CLI checks the output directory and a checkpoint's manifest before torch
is imported, so nothing here imports torch at module level except `sharded_checkpoint.py`.
"""
