"""The G²RPO objective on prepared inputs (`LossInputs`): `Σ_t c_t·L_t` and its metrics.

- `objective_from_logps`: the PyTorch path, from per-token log-probs (of logits, or of hidden
  states × lm_head); the log-ratio is token-level, or the sequence's (GSPO);
- `objective_from_logits`: `G2RPOLoss`'s path, and the one place that chooses between the fused
  kernel (`ops.token_loss.fused_token_loss`: token level, Triton or C++) and log-probs
  followed by `objective_from_logps`;
- `objective_from_hidden`: `FusedLinearG2RPOLoss`'s path: on the native backend at token level
  the one-pass C++ fused-linear loss (`torch.ops.g2rpo_fast.linear_token_loss`: gradients come
  out of the forward, 3 GEMMs instead of 4), else fused-linear log-probs + `objective_from_logps`.
All paths consume the same coefficients c_t (`aggregation.py`) and report the same metrics
(`metrics.py`).
"""
from __future__ import annotations

import torch

from g2rpo_fast.ops.backend import implementation
from g2rpo_fast.ops.fused_linear import compute_fused_linear_logps
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


def fused_kernel_path(x: torch.Tensor, opts: LossOptions) -> str | None:
    """"triton" | "native" when a fused loss kernel covers the case (token-level ratios,
    fp32/bf16/fp16 inputs), else None (log-probs, then the PyTorch objective)."""
    if opts.importance_sampling_level != "token" or x.dtype == torch.float64:
        return None
    path = implementation(x)
    return None if path == "torch" else path


def uses_fused_kernel(logits: torch.Tensor, opts: LossOptions) -> bool:
    return fused_kernel_path(logits, opts) is not None


def objective_from_logits(logits: torch.Tensor, inp: LossInputs, opts: LossOptions, *, inplace_backward=False):
    """(loss, metrics) from logits `[N, V]` or `[B, T, V]`. `inplace_backward=True` lets the
    Triton paths write the logits gradient into the logits buffer (see `ops.logps`)."""
    path = fused_kernel_path(logits, opts)
    if path is not None:
        adv_tok = inp.advantages.to(torch.float32)[inp.layout.seq_idx]
        # Unflattened: the kernel reads strided views such as TRL's logits[:, :-1] in place.
        loss, kl, low, high = fused_token_loss(logits, inp.token_ids, inp.coefficients, adv_tok, inp.old_logps,
                                               inp.ref_logps, opts, inplace_backward=inplace_backward,
                                               native=path == "native")
        return loss, loss_metrics(kl if inp.ref_logps is not None else None, low, high,
                                  inp.weights.to(torch.float32))
    logps = compute_per_token_logps(logits.reshape(-1, logits.shape[-1]), inp.token_ids, opts.temperature,
                                    inplace_backward=inplace_backward)
    return objective_from_logps(logps, inp, opts)


def objective_from_hidden(hidden: torch.Tensor, weight: torch.Tensor, bias, inp: LossInputs, opts: LossOptions):
    """(loss, metrics) from flat hidden states `[N, H]` and the lm_head `weight [V, H]` (+ `bias`)."""
    if fused_kernel_path(hidden, opts) == "native":
        from g2rpo_fast.ops import library

        f32 = lambda t: None if t is None else t.to(torch.float32).contiguous()
        adv_tok = inp.advantages.to(torch.float32)[inp.layout.seq_idx]
        # Which gradients to form is fixed when the op runs (the gradients come out of the forward).
        need = [t is not None and t.requires_grad and torch.is_grad_enabled() for t in (hidden, weight, bias)]
        loss, kl, low, high, *_ = library.linear_token_loss(
            hidden.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous(),
            inp.token_ids.long().contiguous(), f32(inp.coefficients), adv_tok.contiguous(), f32(inp.old_logps),
            f32(inp.ref_logps), float(opts.temperature), float(opts.beta), float(opts.epsilon_low),
            float(opts.epsilon_high), None if opts.delta is None else float(opts.delta), *need)
        return loss, loss_metrics(kl if inp.ref_logps is not None else None, low, high,
                                  inp.weights.to(torch.float32))
    logps = compute_fused_linear_logps(hidden, weight, inp.token_ids, bias=bias, temperature=opts.temperature)
    return objective_from_logps(logps.to(_compute_dtype(hidden)), inp, opts)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32
