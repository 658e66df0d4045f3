"""Held-out evaluation, the one evaluator: roll-outs scored by one reward (the guidance reward,
accuracy by default), through the same generate + score path as training.

- `correctness`: each completion's reward for some rows (unguided, or guided with ℓ tokens);
- `evaluate`: held-out accuracy over a dataset, sharded over ranks (`G2RPOTrainer.evaluate`).
Below both the trainer and the models: it takes the roll-outs (`rollout.guided.Rollouts`) and
the reward function as arguments, so the trainer (`G2RPOTrainer.evaluate`, `g2rpo-fast eval` in
`cli.py`'s `evaluate_checkpoint`) and the built-in model's warm-start report (`models/warmstart.py`,
which groups `correctness` by difficulty) use it without importing each other.
"""
from __future__ import annotations

from g2rpo_fast.rewards.registry import safe_reward_call
from g2rpo_fast.rewards.scoring import reward_inputs


def correctness(rollouts, rows, reward_fn, *, max_new_tokens: int, num_samples: int = 1, n_guided: int = 0,
                guidance_length: int = 0, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seeds=None,
                reward_timeout=None) -> list[float]:
    """`reward_fn`'s score of each of the `num_samples` completions per row, row by row (a
    failing reward scores 0, `safe_reward_call`)."""
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
