"""`g2rpo-fast eval`: a saved checkpoint (or any model) through a trainer and the evaluator.

The checks that need no torch run first (the model source, a checkpoint's manifest), so a
mistake costs a second; then a `G2RPOTrainer` is built on the checkpoint's weights and its
`evaluate` runs the one evaluator (`g2rpo_fast/evaluation.py`).
"""
from __future__ import annotations

import dataclasses


def evaluate_checkpoint(config, checkpoint=None, split=None, max_prompts=None) -> dict:
    """Greedy accuracy (the config's `guidance_reward`, default accuracy) of `checkpoint`
    (a checkpoint-N dir or any model path; None: `config.model_name_or_path`)."""
    from g2rpo_fast.data.loading import is_embedded
    from g2rpo_fast.models.loading import check_model_source

    cfg = dataclasses.replace(config, eval_split=split or config.eval_split, progress_bar=False, plots=False,
                              eval_at_end=True)
    if checkpoint is not None:
        check_model_source(checkpoint, field="--checkpoint")
        _verify_if_checkpoint(checkpoint)
        # the checkpoint's weights and the tokenizer saved with them
        cfg = dataclasses.replace(cfg, model_name_or_path=checkpoint)
    if config.dataset_name is None and not is_embedded(config.model_name_or_path):
        # a model of the user's is never evaluated on the built-in task unless dataset_name names it
        raise ValueError(f"`dataset_name`: no data named to evaluate {checkpoint or config.model_name_or_path} on: "
                         f"give --dataset-name (its held-out split, or --split) and, for held-out rows in "
                         f"another file, --eval-dataset-name ('embedded' names the built-in task)")
    from .trainer import G2RPOTrainer  # torch: after the checks above

    trainer = G2RPOTrainer(cfg)
    if trainer.eval_dataset is None:
        raise ValueError(f"`eval_split`: {cfg.dataset_name or 'the data set'} has no held-out split to evaluate on: "
                         f"name one (--split) or give eval_dataset_name")
    result = trainer.evaluate(max_prompts=max_prompts if max_prompts is not None else cfg.num_eval_prompts)
    result["checkpoint"] = checkpoint or cfg.model_name_or_path
    return result


def _verify_if_checkpoint(path: str) -> None:
    """A training checkpoint (it has a manifest) must verify before it is evaluated."""
    import os

    from g2rpo_fast.checkpointing.manifest import MANIFEST_FILE, verify_checkpoint

    if os.path.isfile(os.path.join(path, MANIFEST_FILE)):
        reason = verify_checkpoint(path)
        if reason is not None:
            raise ValueError(f"`--checkpoint`: {path} is not a complete checkpoint: {reason}")
