"""`G2RPOLoss` (from logits) and `FusedLinearG2RPOLoss` (from hidden states and the lm_head):
thin modules over `prepare_loss_inputs` and the objective.

Usage (TRL-style names)::

    loss_fn = G2RPOLoss(beta=0.04, loss_type="dapo")
    loss, metrics = loss_fn(logits, token_ids, rewards=r, group_size=8,
                            completion_mask=m, guidance_mask=g)
    loss_fn = FusedLinearG2RPOLoss(beta=0.04, loss_type="dapo")
    loss, metrics = loss_fn(hidden, model.lm_head.weight, token_ids, rewards=r, group_size=8,
                            completion_mask=m, guidance_mask=g)
    loss.backward()

`FusedLinearG2RPOLoss` never materialises the [N, V] logits (nor their gradient): loss =
objective(fused_linear_logps(hidden, weight, ...)). Tokens with weight 0 (padding, prompt,
masked guidance) are dropped before the lm_head: every term of the objective and of the metrics
is multiplied by the token weight, so the active tokens alone give the same value and
gradients, and masked tokens cost nothing.
"""
from __future__ import annotations

import torch

from g2rpo_fast.ops.checks import check_same_device, check_tensor
from g2rpo_fast.ops.fused_linear import check_linear_inputs

from .inputs import prepare_loss_inputs
from .objective import objective_from_hidden, objective_from_logits
from .options import LossOptions


def _check_token_shape(token_ids, lead_shape):
    if tuple(token_ids.shape) != tuple(lead_shape):
        raise ValueError(f"`token_ids` has shape {tuple(token_ids.shape)}, expected {tuple(lead_shape)}")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class G2RPOLoss(torch.nn.Module):
    """Clipped surrogate + k3 KL with guidance-token masking (DESIGN.md sections 3-6), from logits.

    Options mirror TRL's `GRPOConfig` (see `LossOptions`): `beta`, `epsilon_low`/`epsilon_high`,
    `delta`, `loss_type` (grpo | bnpo | dapo | dr_grpo), `importance_sampling_level` (token |
    sequence), `max_completion_length` (dr_grpo's normaliser; defaults to T padded / the longest
    completion packed), `temperature`, `guidance_loss` (mask | include), `scale_rewards`.

    `importance_weights` (optional, the shape of `token_ids`, finite, >= 0, only with `beta` == 0)
    multiply each token's term after the loss type's normaliser: TRL's vLLM importance-sampling
    correction (`per_token_loss * importance_sampling_ratio`).
    """

    def __init__(self, beta=0.0, epsilon_low=0.2, epsilon_high=0.2, delta=None, loss_type="grpo",
                 importance_sampling_level="token", max_completion_length=None, temperature=1.0,
                 guidance_loss="mask", scale_rewards="group"):
        super().__init__()
        self.opts = LossOptions(beta, epsilon_low, epsilon_high, delta, loss_type, importance_sampling_level,
                                max_completion_length, temperature, guidance_loss, scale_rewards)

    def forward(self, logits, token_ids, advantages=None, rewards=None, group_size=None, completion_mask=None,
                guidance_mask=None, cu_seqlens=None, old_logps=None, ref_logps=None, num_items_in_batch=None,
                importance_weights=None):
        check_tensor(logits, "logits", floating=True, ndim=(2, 3))
        check_same_device(logits, token_ids=token_ids)
        _check_token_shape(token_ids, logits.shape[:-1])
        inp = prepare_loss_inputs(
            self.opts, token_ids, logits.shape[-1], logits.device, advantages=advantages, rewards=rewards,
            group_size=group_size, completion_mask=completion_mask, guidance_mask=guidance_mask,
            cu_seqlens=cu_seqlens, old_logps=old_logps, ref_logps=ref_logps,
            num_items_in_batch=num_items_in_batch, importance_weights=importance_weights,
            compute_dtype=_compute_dtype(logits))
        return objective_from_logits(logits, inp, self.opts)


class FusedLinearG2RPOLoss(torch.nn.Module):
    """`G2RPOLoss` fused with the lm_head projection: takes `hidden [B, T, H] | [N, H]` and
    `weight [V, H]` (+ optional `bias [V]`) instead of logits; same options, inputs and outputs.
    `skip_masked_tokens=False` computes log-probs for every token (only useful to check the skipping).
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
                num_items_in_batch=None, bias=None, importance_weights=None):
        check_tensor(token_ids, "token_ids", integer=True)
        check_linear_inputs(hidden, weight, bias, token_ids)  # token ids are checked by prepare_loss_inputs
        _check_token_shape(token_ids, hidden.shape[:-1])
        dtype = _compute_dtype(hidden)
        inp = prepare_loss_inputs(
            self.opts, token_ids, weight.shape[0], hidden.device, advantages=advantages, rewards=rewards,
            group_size=group_size, completion_mask=completion_mask, guidance_mask=guidance_mask,
            cu_seqlens=cu_seqlens, old_logps=old_logps, ref_logps=ref_logps,
            num_items_in_batch=num_items_in_batch, importance_weights=importance_weights, compute_dtype=dtype)
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])
        if self.skip_masked_tokens and not torch.compiler.is_compiling():  # a data-dependent shape
            active = torch.nonzero(inp.weights != 0).squeeze(1)
            if active.numel() < inp.weights.numel():
                inp, flat_hidden = inp.select(active), flat_hidden.index_select(0, active)
        return objective_from_hidden(flat_hidden, weight, bias, inp, self.opts)
