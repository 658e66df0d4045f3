"""Held-out evaluation of a checkpoint: greedy roll-outs through the engine, accuracy reward."""
from __future__ import annotations

import dataclasses


def evaluate_checkpoint(config, checkpoint=None, split=None, max_prompts=None) -> dict:
    """Greedy accuracy (the config's `guidance_reward`, default accuracy) of `checkpoint`
    (a checkpoint-N dir or any model path; None: `config.model_name_or_path`)."""
    from .trainer import G2RPOTrainer

    cfg = dataclasses.replace(config, eval_split=split or config.eval_split, progress_bar=False, plots=False)
    if not cfg.eval_split:
        raise ValueError("`eval_split`: no split to evaluate on")
    model = tokenizer = None
    if checkpoint is not None:
        from .models import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(checkpoint)
    trainer = G2RPOTrainer(cfg, model=model, tokenizer=tokenizer)
    result = trainer.evaluate(max_prompts=max_prompts if max_prompts is not None else cfg.num_eval_prompts)
    result["checkpoint"] = checkpoint or cfg.model_name_or_path
    return result
