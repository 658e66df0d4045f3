"""Temperature / top-k / top-p sampling on the device, reproducible per request seed.

Each sampled request draws one uniform number per token from a counter-based generator,
Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), keyed by
the request's seed and counted by its number of generated tokens (the "Philox offset"). The
number is a pure function of (seed, token index), computed with int64 tensor ops on the
logits' device: no host generator, no copy to the host, nothing that depends on which other
requests share the batch, and the same number again when a preempted request is recomputed.
The token is then found by inverse CDF over its filtered distribution.

Filtering follows HF's order: the repetition penalty on the raw logits (every token already in
the prompt or the completion: a positive logit divided by the penalty, a negative one
multiplied), then logits / T, keep the k largest, then the smallest set of the remaining
(renormalised) tokens whose probability reaches top_p, then the tokens whose probability is at
least min_p times the largest. Returned log-probs (and entropies) are the model's *untruncated*
tempered distribution's, log_softmax(z / T) (log_softmax(z) when greedy; no penalty) — the
quantity a trainer recomputes as `old_logps`.

Every branch depends on the call's settings (`SamplingSpec`, Python values), never on tensor
values: a step samples without a host sync and can be captured in a CUDA graph or compiled
with `torch.compile(fullgraph=True)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Philox4x32-10 constants (the multipliers and the Weyl key increments)
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class SamplingSpec:
    """The sampling settings of one `generate` call (every request of a call shares them)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    return_logprobs: bool = False
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off; needs the tokens each row has seen (`seen`)
    return_entropy: bool = False  # the entropy of each step's tempered distribution

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def filters(self) -> bool:
        return self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0

    @property
    def returns_values(self) -> bool:
        return self.return_logprobs or self.return_entropy


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of the 64-bit product of the constant `a` and `b` (int64
    tensors holding 32-bit values), in 16-bit halves so that no int64 product overflows."""
    a_lo, a_hi = a & 0xFFFF, a >> 16
    b_lo, b_hi = b & 0xFFFF, b >> 16
    lo_lo, hi_lo, lo_hi = b_lo * a_lo, b_lo * a_hi, b_hi * a_lo
    cross = (lo_lo >> 16) + (hi_lo & 0xFFFF) + (lo_hi & 0xFFFF)
    low = ((cross & 0xFFFF) << 16) | (lo_lo & 0xFFFF)
    high = b_hi * a_hi + (hi_lo >> 16) + (lo_hi >> 16) + (cross >> 16)
    return high, low


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[torch.Tensor, torch.Tensor], rounds: int = 10):
    """Philox4x32 on int64 tensors holding 32-bit words: 4 counter words, 2 key words -> 4 words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def uniform(seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """One float64 in [0, 1) per row from 53 random bits: Philox keyed by `seeds` (int64, any
    value: its two 32-bit halves) at counter `counters` (int64 >= 0)."""
    zero = torch.zeros_like(counters)
    words = philox4x32((counters & _MASK32, (counters >> 32) & _MASK32, zero, zero),
                       (seeds & _MASK32, (seeds >> 32) & _MASK32))
    bits = ((words[0] >> 5) << 26) | (words[1] >> 6)  # 27 + 26 bits
    return bits.to(torch.float64) * (1.0 / (1 << 53))


def filtered_probs(logits: torch.Tensor, spec: SamplingSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sampling probabilities after temperature, top-k and top-p, and their token ids.

    logits [B, V] fp32. Returns (probs, ids) with probs in descending order and ids [B, n] the
    token of each column, or ids=None when nothing filters (probs then in vocabulary order).
    """
    vocab = logits.shape[-1]
    z = logits / spec.temperature
    if not spec.filters:
        return torch.softmax(z, dim=-1), None
    if spec.top_k == 0 and spec.top_p >= 1.0:  # min-p alone: a threshold, no sort needed
        probs = torch.softmax(z, dim=-1)
        return torch.where(probs >= spec.min_p * probs.amax(-1, keepdim=True), probs, 0.0), None
    if spec.top_k > 0:  # only the k largest can survive: topk beats a full sort
        z_sorted, ids = torch.topk(z, min(spec.top_k, vocab), dim=-1, sorted=True)
        probs = torch.softmax(z_sorted, dim=-1)
    else:
        z_sorted, ids = torch.sort(z, dim=-1, descending=True, stable=True)
        probs = torch.softmax(z_sorted, dim=-1)
    if spec.top_p < 1.0:
        rank = torch.arange(probs.shape[-1], device=logits.device)[None, :]
        mass_before = torch.cumsum(probs, -1) - probs
        probs = torch.where((mass_before < spec.top_p) | (rank == 0), probs, 0.0)
    if spec.min_p > 0.0:  # relative to the most likely token (column 0): renormalising changes no ratio
        probs = torch.where(probs >= spec.min_p * probs[:, :1], probs, 0.0)
    return probs, ids


def seen_tokens(seqs, device) -> torch.Tensor:
    """[B, L] int64: each row's distinct token ids (prompt and completion), padded with its own
    first id (a repeat, so scattering it back is harmless)."""
    rows = [sorted(set(s.token_ids)) for s in seqs]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [r[0]] * (width - len(r)) for r in rows], dtype=torch.long, device=device)


def penalize_repetitions(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor: every id in `seen` (per row) gets logit /
    penalty if positive, logit * penalty if not."""
    values = logits.gather(1, seen)
    return logits.scatter(1, seen, torch.where(values < 0, values * penalty, values / penalty))


def sample_tokens(logits: torch.Tensor, seeds: torch.Tensor, counters: torch.Tensor, spec: SamplingSpec,
                  seen: torch.Tensor | None = None):
    """The next token of each row, and per row the values asked for: (tokens [B] int64, values
    [B, 2] fp32 — the log-prob and the entropy, 0 where not asked — or None), all on the logits'
    device. `seeds`, `counters`: [B] int64 (the request's seed and its number of generated
    tokens); `seen`: `seen_tokens` of the rows, with a repetition penalty."""
    model_logits = logits
    if spec.repetition_penalty != 1.0:
        logits = penalize_repetitions(logits, seen, spec.repetition_penalty)
    if spec.greedy:
        tokens = logits.argmax(-1)
    else:
        probs, ids = filtered_probs(logits, spec)
        cdf = torch.cumsum(probs.double(), -1)
        u = uniform(seeds, counters)
        # inverse CDF: the first column whose cumulative mass exceeds u (zero-mass columns never win)
        idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp(max=probs.shape[-1] - 1)
        tokens = idx.squeeze(1) if ids is None else ids.gather(1, idx).squeeze(1)
    if not spec.returns_values:
        return tokens, None
    z = model_logits if spec.greedy else model_logits / spec.temperature
    logp = torch.log_softmax(z, dim=-1)
    zero = torch.zeros_like(logp[:, 0])
    logprob = logp.gather(1, tokens[:, None]).squeeze(1) if spec.return_logprobs else zero
    entropy = -(logp.exp() * logp).nan_to_num().sum(-1) if spec.return_entropy else zero
    return tokens, torch.stack([logprob, entropy], dim=1)


def fetch(tokens: torch.Tensor, values: torch.Tensor | None, spec: SamplingSpec):
    """The step's tokens, log-probs and entropies on the host (None where not asked): one
    transfer, the step's one host sync."""
    if values is None:
        return tokens.tolist(), None, None
    rows = torch.cat([tokens.to(torch.float64)[:, None], values.to(torch.float64)], dim=1).tolist()  # ids < 2^53
    logprobs = [r[1] for r in rows] if spec.return_logprobs else None
    entropies = [r[2] for r in rows] if spec.return_entropy else None
    return [int(r[0]) for r in rows], logprobs, entropies
