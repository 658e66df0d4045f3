"""`G2RPOLoss`: the clipped G²RPO objective from logits, padded or packed.

Usage (TRL-style names)::

    loss_fn = G2RPOLoss(beta=0.04, loss_type="dapo")
    loss, metrics = loss_fn(logits, token_ids, rewards=r, group_size=8,
                            completion_mask=m, guidance_mask=g)
    loss.backward()
"""
from __future__ import annotations

import torch

from .ops.backend import use_triton
from .ops.checks import check_same_device, check_tensor
from .ops.grpo_loss import LossOptions, g2rpo_loss_from_logps
from .ops.logps import compute_per_token_logps
from .ops.loss_inputs import prepare_loss_inputs


class G2RPOLoss(torch.nn.Module):
    """Clipped surrogate + k3 KL with guidance-token masking (DESIGN.md sections 3-6).

    Options mirror TRL's `GRPOConfig`: `beta`, `epsilon_low`/`epsilon_high`, `delta`,
    `loss_type` (grpo | bnpo | dapo | dr_grpo), `importance_sampling_level` (token | sequence),
    `max_completion_length` (dr_grpo's normaliser; defaults to T padded / the longest
    completion packed), `temperature`, `guidance_loss` (mask | include), `scale_rewards`.
    """

    def __init__(self, beta=0.0, epsilon_low=0.2, epsilon_high=0.2, delta=None, loss_type="grpo",
                 importance_sampling_level="token", max_completion_length=None, temperature=1.0,
                 guidance_loss="mask", scale_rewards="group"):
        super().__init__()
        self.opts = LossOptions(beta, epsilon_low, epsilon_high, delta, loss_type, importance_sampling_level,
                                max_completion_length, temperature, guidance_loss, scale_rewards)

    def forward(self, logits, token_ids, advantages=None, rewards=None, group_size=None, completion_mask=None,
                guidance_mask=None, cu_seqlens=None, old_logps=None, ref_logps=None, num_items_in_batch=None):
        check_tensor(logits, "logits", floating=True, ndim=(2, 3))
        check_same_device(logits, token_ids=token_ids)
        if tuple(token_ids.shape) != tuple(logits.shape[:-1]):
            raise ValueError(f"`token_ids` has shape {tuple(token_ids.shape)}, expected {tuple(logits.shape[:-1])}")
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        inp = prepare_loss_inputs(
            self.opts, token_ids, logits.shape[-1], logits.device, advantages=advantages, rewards=rewards,
            group_size=group_size, completion_mask=completion_mask, guidance_mask=guidance_mask,
            cu_seqlens=cu_seqlens, old_logps=old_logps, ref_logps=ref_logps,
            num_items_in_batch=num_items_in_batch, compute_dtype=dtype)
        if use_triton(logits) and self.opts.importance_sampling_level == "token":
            from .ops.grpo_loss_triton import fused_g2rpo_loss

            # Unflattened: the kernel reads strided views such as TRL's logits[:, :-1] in place.
            return fused_g2rpo_loss(logits, inp, self.opts, num_items_in_batch)
        logps = compute_per_token_logps(logits.reshape(-1, logits.shape[-1]), inp.token_ids, self.opts.temperature)
        return g2rpo_loss_from_logps(logps, inp.advantages, inp.weights, inp.layout, self.opts,
                                     inp.old_logps, inp.ref_logps, num_items_in_batch)
