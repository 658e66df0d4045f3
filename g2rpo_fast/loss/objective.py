"""The G²RPO objective on prepared inputs (`LossInputs`): `Σ_t c_t·L_t` and its metrics.

- `objective_from_logps`: the PyTorch path, from per-token log-probs (of logits, or of hidden
  states × lm_head); the log-ratio is token-level, or the sequence's (GSPO);
- `objective_from_logits`: `G2RPOLoss`'s path, and the one place that chooses between the fused
  Triton kernel (`ops.token_loss.fused_token_loss`: token level, Triton backend) and log-probs
  followed by `objective_from_logps`. Both paths consume the same coefficients c_t
  (`aggregation.py`) and report the same metrics (`metrics.py`).
"""
from __future__ import annotations

import torch

from g2rpo_fast.ops.backend import use_triton
from g2rpo_fast.ops.logps import compute_per_token_logps
from g2rpo_fast.ops.token_loss import fused_token_loss, token_terms

from .inputs import LossInputs
from .layout import Layout, segment_sum
from .metrics import loss_metrics
from .options import LossOptions


def log_ratio(logps, old_logps, weights, layout: Layout, level: str) -> torch.Tensor:
    """log ρ per token; `sequence` level uses the length-normalised sequence ratio (GSPO)."""
    old = logps.detach() if old_logps is None else old_logps.to(logps.dtype)
    # Weight-0 tokens (padding, masked guidance) may carry any finite placeholder in old/ref
    # log-probs; keep them out of exp() so inf * 0 can never turn into a NaN loss or gradient.
    lr = torch.where(weights > 0, logps - old, 0.0)
    if level == "sequence":
        seq = segment_sum(lr * weights, layout) / segment_sum(weights, layout).clamp(min=1.0)
        lr = seq[layout.seq_idx]
    return lr


def objective_from_logps(logps: torch.Tensor, inp: LossInputs, opts: LossOptions):
    """(loss, metrics) from flat log-probs `[N]`."""
    adv_tok = inp.advantages.to(logps.dtype)[inp.layout.seq_idx]
    ratio = log_ratio(logps, inp.old_logps, inp.weights, inp.layout, opts.importance_sampling_level)
    per_token, kl, low, high = token_terms(logps, ratio, adv_tok, inp.weights, inp.ref_logps, opts)
    loss = (inp.coefficients.to(logps.dtype) * per_token).sum()
    return loss, loss_metrics(kl, low, high, inp.weights)


def uses_fused_kernel(logits: torch.Tensor, opts: LossOptions) -> bool:
    """The fused kernel covers token-level ratios in fp32/bf16/fp16 on the Triton backend."""
    return use_triton(logits) and opts.importance_sampling_level == "token" and logits.dtype != torch.float64


def objective_from_logits(logits: torch.Tensor, inp: LossInputs, opts: LossOptions, *, inplace_backward=False):
    """(loss, metrics) from logits `[N, V]` or `[B, T, V]`. `inplace_backward=True` lets the
    Triton paths write the logits gradient into the logits buffer (see `ops.logps`)."""
    if uses_fused_kernel(logits, opts):
        adv_tok = inp.advantages.to(torch.float32)[inp.layout.seq_idx]
        # Unflattened: the kernel reads strided views such as TRL's logits[:, :-1] in place.
        loss, kl, low, high = fused_token_loss(logits, inp.token_ids, inp.coefficients, adv_tok, inp.old_logps,
                                               inp.ref_logps, opts, inplace_backward=inplace_backward)
        return loss, loss_metrics(kl if inp.ref_logps is not None else None, low, high,
                                  inp.weights.to(torch.float32))
    logps = compute_per_token_logps(logits.reshape(-1, logits.shape[-1]), inp.token_ids, opts.temperature,
                                    inplace_backward=inplace_backward)
    return objective_from_logps(logps, inp, opts)
