"""Temperature / top-k / top-p sampling with one seeded generator per request.

Each sampled request draws one uniform number per token from its own CPU
`torch.Generator`, and the token is found by inverse-CDF over its filtered distribution, so
a request's completion does not depend on which other requests share the batch.

Filtering follows HF's order: the repetition penalty on the raw logits (every token already in
the prompt or the completion: a positive logit divided by the penalty, a negative one
multiplied), then logits / T, keep the k largest, then the smallest set of the remaining
(renormalised) tokens whose probability reaches top_p, then the tokens whose probability is at
least min_p times the largest. Returned log-probs are under the model's *untruncated* tempered
distribution, log_softmax(z / T) (log_softmax(z) when greedy; no penalty) — the quantity a
trainer recomputes as `old_logps`.
"""
from __future__ import annotations

import torch

from .sequence import Sequence


def filtered_probs(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                   top_p: torch.Tensor, min_p: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sampling probabilities after temperature, top-k, top-p and min-p, and their token ids.

    logits [B, V] fp32; temperature (> 0), top_k (0 = off), top_p, min_p (0 = off): [B].
    Returns (probs, ids) with probs in descending order and ids [B, n] the token of each column,
    or ids=None when no row filters (probs then in vocabulary order: no sort needed).
    """
    vocab = logits.shape[-1]
    z = logits / temperature[:, None]
    no_min_p = min_p is None or bool((min_p <= 0).all())
    if bool((top_k == 0).all()) and bool((top_p >= 1.0).all()) and no_min_p:
        return torch.softmax(z, dim=-1), None
    if bool((top_k > 0).all()):  # only the k_max largest can survive: topk beats a full sort
        z_sorted, ids = torch.topk(z, min(int(top_k.max()), vocab), dim=-1, sorted=True)
        log_norm = torch.logsumexp(z, dim=-1, keepdim=True)
        probs = torch.exp(z_sorted - log_norm)
    else:
        z_sorted, ids = torch.sort(z, dim=-1, descending=True, stable=True)
        probs = torch.softmax(z_sorted, dim=-1)
    rank = torch.arange(probs.shape[-1], device=logits.device)[None, :]
    k = torch.where(top_k > 0, top_k, vocab)
    probs = torch.where(rank < k[:, None], probs, 0.0)
    probs = probs / probs.sum(-1, keepdim=True)
    mass_before = torch.cumsum(probs, -1) - probs
    keep = (mass_before < top_p[:, None]) | (top_p[:, None] >= 1.0) | (rank == 0)
    if not no_min_p:  # relative to the most likely token (column 0): renormalising changes no ratio
        keep &= probs >= min_p[:, None] * probs[:, :1]
    return torch.where(keep, probs, 0.0), ids


def penalize_repetitions(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor, row by row: every token id already in the
    sequence (prompt and completion) gets logit / penalty if positive, logit * penalty if not."""
    rows = [i for i, s in enumerate(seqs) if s.params.repetition_penalty != 1.0]
    if not rows:
        return logits
    logits = logits.clone()
    for i in rows:
        ids = torch.tensor(sorted(set(seqs[i].token_ids)), dtype=torch.long, device=logits.device)
        seen = logits[i, ids]
        penalty = seqs[i].params.repetition_penalty
        logits[i, ids] = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits


def sample(logits: torch.Tensor, seqs: list[Sequence], return_logprobs: bool):
    """Pick the next token of each sequence; returns (token ids, log-probs or None)."""
    dev = logits.device
    model_logits, logits = logits, penalize_repetitions(logits, seqs)
    temps = torch.tensor([s.params.temperature for s in seqs], dtype=torch.float32, device=dev)
    greedy = temps == 0
    sampled_rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
    all_sampled = len(sampled_rows) == len(seqs)
    # the argmax is only needed for greedy rows (a GRPO roll-out has none)
    tokens = None if all_sampled else logits.argmax(-1)
    if sampled_rows:
        rows = None if all_sampled else torch.tensor(sampled_rows, device=dev)
        sub = seqs if all_sampled else [seqs[i] for i in sampled_rows]
        probs, ids = filtered_probs(
            logits if rows is None else logits[rows], temps if rows is None else temps[rows],
            torch.tensor([s.params.top_k for s in sub], device=dev),
            torch.tensor([s.params.top_p for s in sub], dtype=torch.float32, device=dev),
            torch.tensor([s.params.min_p for s in sub], dtype=torch.float32, device=dev))
        cdf = torch.cumsum(probs.double(), -1)
        u = torch.cat([torch.rand(1, generator=s.generator, dtype=torch.float64) for s in sub]).to(dev)
        # inverse CDF: first column whose cumulative mass exceeds u (zero-mass columns never win)
        idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp(max=probs.shape[-1] - 1)
        picked = idx.squeeze(1) if ids is None else ids.gather(1, idx).squeeze(1)
        if rows is None:
            tokens = picked
        else:
            tokens[rows] = picked
    logprobs = None
    entropy_rows = [i for i, s in enumerate(seqs) if s.params.entropy]
    if return_logprobs or entropy_rows:
        safe_t = torch.where(greedy, torch.ones_like(temps), temps)
        logp = torch.log_softmax(model_logits / safe_t[:, None], dim=-1)
        if return_logprobs:
            logprobs = logp.gather(1, tokens[:, None]).squeeze(1).tolist()
        if entropy_rows:  # of the model's tempered distribution, as TRL's entropy (before any filtering)
            entropy = (-(logp.exp() * logp).nan_to_num().sum(-1)).tolist()
            for i in entropy_rows:
                seqs[i].entropy_sum += entropy[i]
    return tokens.tolist(), logprobs
