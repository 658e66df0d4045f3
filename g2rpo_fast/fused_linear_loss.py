"""`FusedLinearG2RPOLoss`: the G²RPO objective from hidden states and the lm_head.

Same options, inputs and outputs as `G2RPOLoss`, but it takes `hidden [B, T, H] | [N, H]` and
`weight [V, H]` (+ optional `bias [V]`) instead of logits, so the [N, V] logits (and their
gradient) never exist: loss = g2rpo_loss_from_logps(fused_linear_logps(hidden, weight, ...)).

Tokens with weight 0 (padding, prompt, masked guidance) are dropped before the lm_head: every
term of the objective and of the metrics is multiplied by the token weight, so computing the
loss on the active tokens alone gives the same value and gradients, and masked tokens cost nothing.

Usage::

    loss_fn = FusedLinearG2RPOLoss(beta=0.04, loss_type="dapo")
    loss, metrics = loss_fn(hidden, model.lm_head.weight, token_ids, rewards=r, group_size=8,
                            completion_mask=m, guidance_mask=g)
"""
from __future__ import annotations

import dataclasses

import torch

from .ops.checks import check_tensor
from .ops.fused_linear import check_linear_inputs, compute_fused_linear_logps
from .ops.grpo_loss import LossOptions, g2rpo_loss_from_logps
from .ops.loss_inputs import prepare_loss_inputs


class FusedLinearG2RPOLoss(torch.nn.Module):
    """Clipped surrogate + k3 KL with guidance masking, fused with the lm_head projection.

    Options are those of `G2RPOLoss` (see its docstring); `skip_masked_tokens=False` computes
    log-probs for every token (only useful to check the skipping).
    """

    def __init__(self, beta=0.0, epsilon_low=0.2, epsilon_high=0.2, delta=None, loss_type="grpo",
                 importance_sampling_level="token", max_completion_length=None, temperature=1.0,
                 guidance_loss="mask", scale_rewards="group", skip_masked_tokens=True):
        super().__init__()
        self.opts = LossOptions(beta, epsilon_low, epsilon_high, delta, loss_type, importance_sampling_level,
                                max_completion_length, temperature, guidance_loss, scale_rewards)
        self.skip_masked_tokens = skip_masked_tokens

    def forward(self, hidden, weight, token_ids, advantages=None, rewards=None, group_size=None,
                completion_mask=None, guidance_mask=None, cu_seqlens=None, old_logps=None, ref_logps=None,
                num_items_in_batch=None, bias=None):
        check_tensor(token_ids, "token_ids", integer=True)
        check_linear_inputs(hidden, weight, bias, token_ids)  # token ids are checked by prepare_loss_inputs
        if tuple(token_ids.shape) != tuple(hidden.shape[:-1]):
            raise ValueError(f"`token_ids` has shape {tuple(token_ids.shape)}, expected {tuple(hidden.shape[:-1])}")
        dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        inp = prepare_loss_inputs(
            self.opts, token_ids, weight.shape[0], hidden.device, advantages=advantages, rewards=rewards,
            group_size=group_size, completion_mask=completion_mask, guidance_mask=guidance_mask,
            cu_seqlens=cu_seqlens, old_logps=old_logps, ref_logps=ref_logps,
            num_items_in_batch=num_items_in_batch, compute_dtype=dtype)
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])
        weights, layout, old, ref, tokens = inp.weights, inp.layout, inp.old_logps, inp.ref_logps, inp.token_ids
        if self.skip_masked_tokens:
            active = torch.nonzero(weights != 0).squeeze(1)
            if active.numel() < weights.numel():
                pick = lambda t: None if t is None else t.index_select(0, active)
                flat_hidden, tokens, weights, old, ref = (pick(flat_hidden), pick(tokens), pick(weights),
                                                          pick(old), pick(ref))
                layout = dataclasses.replace(layout, seq_idx=layout.seq_idx.index_select(0, active))
        logps = compute_fused_linear_logps(flat_hidden, weight, tokens, bias=bias, temperature=self.opts.temperature)
        return g2rpo_loss_from_logps(logps.to(dtype), inp.advantages, weights, layout, self.opts, old, ref,
                                     num_items_in_batch)
