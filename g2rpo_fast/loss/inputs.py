"""The loss's inputs, checked and flattened once (`prepare_loss_inputs` -> `LossInputs`).

Both modules (`G2RPOLoss`, `FusedLinearG2RPOLoss`) call it: every shape, dtype, device and value
check of DESIGN.md's "bad input" rule lives here, then the padded or packed layout becomes flat
`[N]` tensors plus `seq_idx`, the token weights and the aggregation coefficients c_t.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from g2rpo_fast.ops.advantages import group_advantages
from g2rpo_fast.ops.checks import check_finite, check_same_device, check_shape, check_tensor, check_token_ids, tracing

from .aggregation import coefficients, token_weights
from .layout import Layout, make_layout
from .options import LossOptions


@dataclass
class LossInputs:
    token_ids: torch.Tensor  # [N] flat
    layout: Layout
    weights: torch.Tensor  # [N] token weights w_t (completion, minus guidance when masked)
    coefficients: torch.Tensor  # [N] aggregation coefficients c_t: loss = Σ c_t·L_t
    advantages: torch.Tensor  # [S]
    old_logps: torch.Tensor | None  # [N]
    ref_logps: torch.Tensor | None  # [N]

    def select(self, index: torch.Tensor) -> LossInputs:
        """The inputs of the tokens at `index` only (same sequences and advantages)."""
        pick = lambda t: None if t is None else t.index_select(0, index)
        layout = dataclasses.replace(self.layout, seq_idx=self.layout.seq_idx.index_select(0, index))
        return LossInputs(pick(self.token_ids), layout, pick(self.weights), pick(self.coefficients),
                          self.advantages, pick(self.old_logps), pick(self.ref_logps))


def prepare_loss_inputs(opts: LossOptions, token_ids, vocab_size, device, *, advantages=None, rewards=None,
                        group_size=None, completion_mask=None, guidance_mask=None, cu_seqlens=None,
                        old_logps=None, ref_logps=None, num_items_in_batch=None, importance_weights=None,
                        compute_dtype=torch.float32) -> LossInputs:
    check_tensor(token_ids, "token_ids", integer=True)
    check_same_device(token_ids, completion_mask=completion_mask, guidance_mask=guidance_mask,
                      cu_seqlens=cu_seqlens, old_logps=old_logps, ref_logps=ref_logps,
                      advantages=advantages, rewards=rewards, importance_weights=importance_weights)
    if token_ids.device != device:
        raise ValueError(f"`token_ids` is on {token_ids.device} but the inputs are on {device}")
    layout = make_layout(tuple(token_ids.shape), device, cu_seqlens)
    check_token_ids(token_ids, vocab_size)
    for name, t in (("completion_mask", completion_mask), ("guidance_mask", guidance_mask),
                    ("old_logps", old_logps), ("ref_logps", ref_logps), ("importance_weights", importance_weights)):
        check_shape(t, name, token_ids.shape)
    for name, t in (("old_logps", old_logps), ("ref_logps", ref_logps), ("importance_weights", importance_weights)):
        if t is not None:
            check_tensor(t, name, floating=True)
            check_finite(t, name)
    if importance_weights is not None:
        if opts.beta != 0:
            # The kernels weigh a token's KL term with the same coefficient as its policy term.
            raise ValueError("`importance_weights` scale the policy term only, so they need `beta` == 0")
        if not tracing() and bool((importance_weights < 0).any()):
            raise ValueError("`importance_weights` must be >= 0")
    if num_items_in_batch is not None and not float(num_items_in_batch) > 0:
        raise ValueError(f"`num_items_in_batch` must be positive, got {num_items_in_batch!r}")

    if advantages is not None:
        if rewards is not None:
            raise ValueError("pass either `advantages` or (`rewards`, `group_size`), not both")
        check_tensor(advantages, "advantages", floating=True)
        advantages = advantages.reshape(-1) if advantages.dim() == 2 and advantages.shape[-1] == 1 else advantages
        check_shape(advantages, "advantages", (layout.num_seqs,))
        check_finite(advantages, "advantages")
        adv = advantages.detach().to(compute_dtype)
    elif rewards is not None:
        if group_size is None:
            raise ValueError("`group_size` is required when `rewards` is given")
        check_tensor(rewards, "rewards", floating=True)
        check_shape(rewards, "rewards", (layout.num_seqs,))
        adv = group_advantages(rewards, group_size, opts.scale_rewards).to(compute_dtype)
    else:
        raise ValueError("one of `advantages` or `rewards` (with `group_size`) is required")
    if opts.beta != 0 and ref_logps is None:
        raise ValueError("`ref_logps` is required when `beta` != 0 (the KL term needs it)")

    flat = lambda t: None if t is None else t.reshape(-1)
    like = torch.empty(token_ids.numel(), device=device, dtype=compute_dtype)
    weights = token_weights(flat(completion_mask), flat(guidance_mask), opts.guidance_loss, like)
    coef = coefficients(weights, layout, opts, num_items_in_batch)
    if importance_weights is not None:  # after the normalisers, which count tokens, not weights
        coef = coef * flat(importance_weights).to(compute_dtype)
    return LossInputs(
        token_ids=token_ids.reshape(-1),
        layout=layout,
        weights=weights,
        coefficients=coef,
        advantages=adv,
        old_logps=None if old_logps is None else flat(old_logps).to(compute_dtype),
        ref_logps=None if ref_logps is None else flat(ref_logps).to(compute_dtype),
    )
