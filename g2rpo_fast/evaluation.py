"""Held-out evaluation, the one evaluator: roll-outs scored by one reward (the guidance reward,
accuracy by default), through the same generate + score path as training (`rollouts.py`).

- `correctness`: each completion's reward for some rows (unguided, or guided with ℓ tokens);
- `evaluate`: held-out accuracy over a dataset, sharded over ranks (`G2RPOTrainer.evaluate`);
- `evaluate_checkpoint`: the same for a saved checkpoint or model (`g2rpo-fast eval`).
The warm-start report (`models/warmstart.py`) groups `correctness` by difficulty.
"""
from __future__ import annotations

import dataclasses

from .rollouts import reward_inputs


def correctness(rollouts, rows, reward_fn, *, max_new_tokens: int, num_samples: int = 1, n_guided: int = 0,
                guidance_length: int = 0, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seeds=None,
                reward_timeout=None) -> list[float]:
    """`reward_fn`'s score of each of the `num_samples` completions per row, row by row (a
    failing reward scores 0, `safe_reward_call`)."""
    from g2rpo_fast.rewards import safe_reward_call

    samples = rollouts.generate(rows, group_size=num_samples, n_guided=n_guided, guidance_length=guidance_length,
                                max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                seeds=seeds)
    prompts, completions, columns = reward_inputs(rows, samples, rollouts.prompt_field)
    values, _errors = safe_reward_call(reward_fn, prompts, completions, reward_timeout=reward_timeout, **columns)
    return values


def evaluate(rollouts, dataset, reward_fn, config, dist, comm_device, *, max_prompts=None, max_new_tokens=None,
             temperature=0.0, num_samples=1, prefix="eval") -> dict:
    """`{prefix}_accuracy` (mean reward) and `{prefix}_count` over the first `max_prompts` rows
    of `dataset`, unguided: greedy, or `num_samples` completions per prompt sampled at
    `temperature` (seeded by `config.seed` and the rank). Each rank takes every world_size-th row."""
    import numpy as np
    import torch

    n = len(dataset) if max_prompts is None else min(len(dataset), max_prompts)
    rows = [dataset[i] for i in range(dist.rank, n, dist.world_size)]
    count = len(rows) * num_samples
    correct = 0.0
    if count:
        seeds = None
        if temperature > 0:
            seq = np.random.SeedSequence([config.seed, 10**6 + dist.rank])
            seeds = [int(x) for x in seq.generate_state(count, dtype=np.uint64) % (2**62)]
        sampled = temperature > 0
        values = correctness(rollouts, rows, reward_fn, num_samples=num_samples,
                             max_new_tokens=max_new_tokens or config.max_completion_length, temperature=temperature,
                             top_p=config.top_p if sampled else 1.0, top_k=config.top_k if sampled else 0,
                             seeds=seeds, reward_timeout=config.reward_timeout)
        rollouts.engine.free_kv_cache()
        correct = float(sum(values))
    totals = [correct, float(count)]
    if dist.world_size > 1:
        t = torch.tensor(totals, dtype=torch.float64, device=comm_device)
        torch.distributed.all_reduce(t)
        totals = t.tolist()
    return {f"{prefix}_accuracy": totals[0] / max(totals[1], 1.0), f"{prefix}_count": int(totals[1])}


def evaluate_checkpoint(config, checkpoint=None, split=None, max_prompts=None) -> dict:
    """Greedy accuracy (the config's `guidance_reward`, default accuracy) of `checkpoint`
    (a checkpoint-N dir or any model path; None: `config.model_name_or_path`)."""
    from g2rpo_fast.models.loading import check_model_source

    cfg = dataclasses.replace(config, eval_split=split or config.eval_split, progress_bar=False, plots=False)
    if not cfg.eval_split:
        raise ValueError("`eval_split`: no split to evaluate on")
    model = tokenizer = None
    if checkpoint is not None:
        check_model_source(checkpoint, field="--checkpoint")
        _verify_if_checkpoint(checkpoint)
    from g2rpo_fast.models.loading import load_model_and_tokenizer

    from .trainer import G2RPOTrainer  # torch: after the checks above

    if checkpoint is not None:
        model, tokenizer = load_model_and_tokenizer(checkpoint, field="--checkpoint")
    trainer = G2RPOTrainer(cfg, model=model, tokenizer=tokenizer)
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
