"""`use_g2rpo_loss`: TRL's GRPO loss computed by `FusedLinearG2RPOLoss` (Triton on CUDA, C++ on the CPU).

TRL's options map one to one onto the loss (`loss_from_config`): `beta`, `epsilon` ->
`epsilon_low`, `epsilon_high` (None: `epsilon`), `delta`, `loss_type` (grpo | bnpo | dapo |
dr_grpo), `importance_sampling_level`, `max_completion_length` (dr_grpo's normaliser, TRL's
value), `temperature`, plus `guidance_loss`; TRL's advantages, old and reference log-probs,
masks and vLLM importance-sampling ratio are its inputs. The normalisers are TRL's: grpo /
bnpo / dr_grpo are divided by the accumulation steps, dapo by TRL's token count rescaled to one
accumulation window (`dapo_token_count`).

The loss runs *inside the model's forward* (`install_loss_forward`), like TRL's own fused LM
head: DDP and FSDP see one forward through their wrapper, FSDP2's sharded head is gathered with
`full_tensor()`. The forward runs the backbone, takes the hidden states before each completion
token and hands them with `lm_head.weight` to the loss, which never forms the `[B, T, V]`
logits. Not supported (refused at construction): DeepSpeed ZeRO-3 (the head is partitioned
outside its own forward), vision-language processors, MoE auxiliary losses, models whose logits
are scaled or soft-capped.

TRL logs `entropy` and the per-sequence `clip_ratio/low_min`, `clip_ratio/high_max` from the
per-token log-probs and logits; the fused loss forms neither, so with `use_g2rpo_loss` those
three keys are not logged. `kl`, `clip_ratio/low_mean`, `clip_ratio/high_mean` and
`clip_ratio/region_mean` are, over the same tokens as TRL's (the clip ratios at token level only:
with `importance_sampling_level="sequence"` TRL averages them over sequences, which the loss's
token means cannot give, so they are not logged there).
"""
from __future__ import annotations

import functools
import types

import torch

from g2rpo_fast.loss import FusedLinearG2RPOLoss

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch built without distributed
    DTensor = ()

# Config attributes of logit scaling / soft-capping (TRL's fused head applies them; this loss does not).
SCALED_LOGITS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                 "logits_scaling")


def loss_from_config(args) -> FusedLinearG2RPOLoss:
    """The loss module of a `GuidedGRPOConfig` (TRL's names -> the loss's)."""
    return FusedLinearG2RPOLoss(
        beta=args.beta, epsilon_low=args.epsilon,
        epsilon_high=args.epsilon if args.epsilon_high is None else args.epsilon_high, delta=args.delta,
        loss_type=args.loss_type, importance_sampling_level=args.importance_sampling_level,
        max_completion_length=args.max_completion_length, temperature=args.temperature,
        guidance_loss=args.guidance_loss)


def check_model_support(model, *, is_vlm: bool, zero3: bool, aux_loss: bool) -> None:
    if zero3:
        raise ValueError("`use_g2rpo_loss` with DeepSpeed ZeRO-3 is not supported: the fused loss reads lm_head's "
                         "weight whole, which ZeRO-3 partitions; use ZeRO-1/2 or FSDP, or use_g2rpo_loss=False")
    if is_vlm:
        raise ValueError("`use_g2rpo_loss` supports text-only models (the processing class is a multimodal "
                         "processor); set use_g2rpo_loss=False")
    if aux_loss:
        raise ValueError("`use_g2rpo_loss` does not add the MoE router auxiliary loss: set router_aux_loss_coef=0 "
                         "or use_g2rpo_loss=False")
    config = model.config.get_text_config()
    for name in SCALED_LOGITS:
        value = getattr(config, name, None)
        if value is not None and value != 1.0:
            raise ValueError(f"`use_g2rpo_loss`: the model's logits are transformed ({name}={value}), which the "
                             "fused loss (hidden @ lm_head.weight / temperature) does not do; use_g2rpo_loss=False")


def install_loss_forward(model) -> None:
    """Let `model(input_ids, attention_mask, g2rpo_loss=(loss_fn, completion_ids, loss_kwargs))`
    return `loss_fn(hidden before each completion token, lm_head.weight, completion_ids, ...)`;
    without `g2rpo_loss` the forward is the one it replaces (TRL's, so generation is unchanged)."""
    previous = model.forward

    @functools.wraps(type(model).forward)  # generate() checks its kwargs against this signature
    def forward(self, *args, g2rpo_loss=None, **kwargs):
        if g2rpo_loss is None:
            return previous(*args, **kwargs)
        loss_fn, completion_ids, loss_kwargs = g2rpo_loss
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        width = completion_ids.size(1)
        hidden = hidden[:, -width - 1:-1]  # position t predicts token t + 1
        head = self.get_output_embeddings()
        weight, bias = head.weight, head.bias
        if isinstance(weight, DTensor):  # FSDP2 shards the head
            weight = weight.full_tensor()
            bias = None if bias is None else bias.full_tensor()
        # The head's matmul in autocast's dtype, as an nn.Linear lm_head would run (bf16 under TRL's
        # default bf16=True); the loss accumulates in fp32 whatever its inputs, outside autocast.
        device_type = hidden.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
        hidden, weight = hidden.to(weight.device, dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device_type, enabled=False):
            return loss_fn(hidden, weight, completion_ids, bias=bias, **loss_kwargs)

    model.forward = types.MethodType(forward, model)


def dapo_token_count(num_items_in_batch, num_processes: int, accumulation_steps: int, steps_per_generation: int,
                     training: bool):
    """TRL's dapo normaliser: the generation batch's token count rescaled to one accumulation window."""
    count = num_items_in_batch.clamp(min=1.0) / num_processes
    if training:
        count = count * accumulation_steps / steps_per_generation
    return count


def loss_inputs(inputs: dict, beta: float, importance_correction: bool) -> dict:
    """The loss's keyword inputs from TRL's batch dict (advantages, masks, old / ref / IS tensors)."""
    mask = inputs["completion_mask"]
    if "tool_mask" in inputs:
        mask = mask * inputs["tool_mask"]
    advantages = inputs["advantages"]
    if advantages.dim() != 1:
        raise ValueError(f"`use_g2rpo_loss` takes one advantage per completion, got shape {tuple(advantages.shape)}")
    kwargs = dict(advantages=advantages, completion_mask=mask, guidance_mask=inputs.get("guidance_mask"),
                  old_logps=inputs.get("old_per_token_logps"),
                  ref_logps=inputs.get("ref_per_token_logps") if beta != 0.0 else None)
    if importance_correction:
        kwargs["importance_weights"] = inputs["importance_sampling_ratio"].expand_as(mask).float()
    return kwargs
