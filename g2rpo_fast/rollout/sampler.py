"""Temperature / top-k / top-p sampling with one seeded generator per request.

Each sampled request draws one uniform number per token from its own CPU
`torch.Generator`, and the token is found by inverse-CDF over its filtered distribution, so
a request's completion does not depend on which other requests share the batch.

Filtering follows HF's order: logits / T, keep the k largest, then the smallest set of the
remaining (renormalised) tokens whose probability reaches top_p. Returned log-probs are
under the *untruncated* tempered distribution, log_softmax(z / T) (log_softmax(z) when
greedy) — the quantity a trainer recomputes as `old_logps`.
"""
from __future__ import annotations

import torch

from .sequence import Sequence


def filtered_probs(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                   top_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sampling probabilities after temperature, top-k and top-p, and their token ids.

    logits [B, V] fp32; temperature (> 0), top_k (0 = off), top_p: [B]. Returns (probs, ids)
    with probs in descending order and ids [B, n] the token of each column, or ids=None when
    no row filters (probs then in vocabulary order: no sort needed).
    """
    vocab = logits.shape[-1]
    z = logits / temperature[:, None]
    if bool((top_k == 0).all()) and bool((top_p >= 1.0).all()):
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
    return torch.where(keep, probs, 0.0), ids


def sample(logits: torch.Tensor, seqs: list[Sequence], return_logprobs: bool):
    """Pick the next token of each sequence; returns (token ids, log-probs or None)."""
    dev = logits.device
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
            torch.tensor([s.params.top_p for s in sub], dtype=torch.float32, device=dev))
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
    if return_logprobs:
        safe_t = torch.where(greedy, torch.ones_like(temps), temps)
        logp = torch.log_softmax(logits / safe_t[:, None], dim=-1)
        logprobs = logp.gather(1, tokens[:, None]).squeeze(1).tolist()
    return tokens.tolist(), logprobs
