"""Which of TRL's samples are guided, and with which tokens (DESIGN.md section 1, in TRL's layout).

TRL's sampler repeats each prompt `num_generations` times in a row, and the generation batch is
cut into equal slices, one per process: sample `i` of process `p` has the global index
`p * n_local + i`, in group `global // G` at place `global % G`: the grouping TRL's advantages
use after gathering the rewards. A group may span processes; each process decides for its own
samples from that index, so no communication is needed. The first `n_guided` places of every
group are guided with the first ℓ solution tokens (`rollout.composition.guidance_prefix`:
tokenized without special tokens, all of it when shorter, never padded).

Nothing here imports trl (tested without it).
"""
from __future__ import annotations

import math

import torch

from g2rpo_fast.rollout.composition import guidance_prefix


def sample_guidance(rows: list[dict], tokenizer, field: str, first_index: int, group_size: int, n_guided: int,
                    length: int) -> list[list[int]]:
    """The guidance token ids of each sample (empty when unguided), in the order of `rows`."""
    out = []
    for i, row in enumerate(rows):
        if length == 0 or (first_index + i) % group_size >= n_guided:
            out.append([])
            continue
        if field not in row:
            raise ValueError(f"`guidance_field`: the training rows have no column {field!r} (columns: "
                             f"{sorted(row)}); guided roll-outs need the reference solution")
        solution = row[field]
        if not isinstance(solution, str):
            raise ValueError(f"`guidance_field` {field!r} must hold text, got {type(solution).__name__} "
                             f"({solution!r:.80})")
        ids = tokenizer(solution, add_special_tokens=False)["input_ids"]
        out.append(guidance_prefix(ids, length))
    return out


def join_guidance(guidance: list[list[int]], completion_ids: list[list[int]], logprobs):
    """Guidance + generated ids per sample; the sampling log-probs (vLLM's) get NaN at the guidance
    tokens, which TRL's importance-sampling correction reads as "no correction" (ratio 1) and its
    metrics skip."""
    if len(completion_ids) != len(guidance):
        raise ValueError(f"got {len(completion_ids)} completions for {len(guidance)} guided inputs")
    joined = [list(g) + list(c) for g, c in zip(guidance, completion_ids)]
    if logprobs is not None:
        logprobs = [[math.nan] * len(g) + list(lp) for g, lp in zip(guidance, logprobs)]
    return joined, logprobs


def guidance_mask(lengths: list[int], width: int, device) -> torch.Tensor:
    """`[B, width]` long: 1 on the first `lengths[b]` completion tokens of row `b` (right-padded rows)."""
    if any(n > width for n in lengths):
        raise ValueError(f"a guidance of {max(lengths)} tokens does not fit completions of {width}")
    positions = torch.arange(width, device=device)
    return (positions.unsqueeze(0) < torch.tensor(lengths, device=device, dtype=torch.long).unsqueeze(1)).long()
