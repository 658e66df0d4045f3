"""The packed policy forward: a micro-batch's packed row (`layout.py`) through the model.

The row holds every sequence of the micro-batch, no padding, position ids restarting per
sequence. The trainer installs the varlen attention of `packed_attention.py`: each sequence
attends only to itself through a varlen kernel and no [ΣL, ΣL] mask is ever built
(`PolicyHidden` passes the row's `cu_seqlens`, computed once from the position ids; a
prefix-shared row passes its segments and key index). A model left on HF's own attention gets
transformers' block-diagonal mask from the same position ids instead (correct, but ΣL²).
tests/test_packing_forward.py checks both against per-sequence forwards. The hidden states at
the positions that predict completion tokens (guidance tokens included, as context for the
loss's guidance mask) are gathered into `[N, H]`, the packed layout of the loss with
`cu_seqlens` over completions.
"""
from __future__ import annotations

import itertools

import torch

from .layout import PackedBatch, packed_attention_kwargs, prefix_shared_attention_kwargs


def decoder_of(model):
    """The transformer body (without lm_head) of a causal LM."""
    core = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    if core is None:
        core = model.get_decoder()
    return core


def lm_head_params(model):
    """The lm_head's weight and bias, as the loss's fused matmul takes them. A LoRA lm_head (peft's
    layer: `base_layer`, `lora_A`, `lora_B`, `scaling`) gives its effective weight W + s·B·A,
    differentiable in the adapters (its dropout is not applied: the merged form has none)."""
    head = model.get_output_embeddings()
    base = getattr(head, "base_layer", None)
    if base is None or not hasattr(head, "lora_A"):
        return head.weight, getattr(head, "bias", None)
    weight = base.weight
    if not (getattr(head, "disable_adapters", False) or getattr(head, "merged", False)):
        for name in head.active_adapters:
            if name in head.lora_A:
                weight = weight + head.scaling[name] * (head.lora_B[name].weight @ head.lora_A[name].weight)
    return weight, getattr(base, "bias", None)


class PolicyHidden(torch.nn.Module):
    """`forward(input_ids, position_ids) -> last hidden states [1, ΣL, H]` of a causal LM.

    A module of its own so DDP can wrap it (its forward is what DDP hooks into).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, attention_kwargs=None):
        """`attention_kwargs`: the varlen metadata of the row (default: sequences delimited by
        the position ids; a prefix-shared row brings its own, `layout.py`)."""
        kwargs = attention_kwargs if attention_kwargs is not None else packed_attention_kwargs(position_ids)
        out = decoder_of(self.model)(input_ids=input_ids, position_ids=position_ids, attention_mask=None,
                                     use_cache=False, **kwargs)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def packed_hidden(policy, batch: PackedBatch, autocast_dtype=None) -> torch.Tensor:
    """Hidden states `[N, H]` that predict the completion tokens of `batch`: one `policy` call per
    piece of the row (`row_splits`), then 1-token dummy calls up to `batch.num_forwards`, whose
    output enters the result times zero (their backward runs, contributing zero gradients)."""
    device_type = batch.input_ids.device.type
    bounds = [0, *batch.row_splits, batch.input_ids.shape[1]]
    pieces = list(itertools.pairwise(bounds))
    dummies = max(0, batch.num_forwards - len(pieces))
    rows = []
    for k, (a, b) in enumerate(pieces + [(0, 1)] * dummies):
        kwargs = None
        if batch.shared_prefix is not None and k < len(pieces):
            kwargs = prefix_shared_attention_kwargs(batch.shared_prefix, a, b, batch.input_ids.device)
        position_ids = batch.position_ids[:, a:b] if k < len(pieces) else torch.zeros_like(batch.position_ids[:, :1])
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            rows.append(policy(batch.input_ids[:, a:b], position_ids, kwargs)[0])
    hidden = rows[0] if len(pieces) == 1 else torch.cat(rows[:len(pieces)], dim=0)
    hidden = hidden.index_select(0, batch.gather_index)
    for dummy in rows[len(pieces):]:
        hidden = hidden + dummy.sum() * 0.0
    return hidden


class PackedPolicy(torch.nn.Module):
    """The module DDP wraps and FSDP shards: one call per micro-batch, whatever the row split.

    `forward(batch)` -> the completion tokens' log-probs `[N]` (old / reference policy);
    `forward(batch, loss_inputs)` -> `(loss, metrics)` of `loss_fn` (the training forward).
    The lm_head is applied inside the call, so FSDP has its weight gathered there, and DDP sees
    one forward (one set of collectives) per micro-batch on every rank.
    """

    def __init__(self, model, runtime, loss_fn=None, temperature: float = 1.0, forward_context=None):
        super().__init__()
        self.model = model
        self.runtime = runtime
        self.loss_fn = loss_fn
        self.temperature = temperature
        # a context manager factory every forward runs in (the reference of fresh adapters: adapters off)
        self.forward_context = forward_context

    def forward(self, batch: PackedBatch, loss_inputs: dict | None = None):
        if self.forward_context is not None:
            with self.forward_context():
                return self._forward(batch, loss_inputs)
        return self._forward(batch, loss_inputs)

    def _forward(self, batch: PackedBatch, loss_inputs: dict | None = None):
        hidden = packed_hidden(PolicyHidden(self.model), batch, self.runtime.autocast_dtype)
        # the loss's matmuls in the compute dtype, its accumulation in fp32 (g2rpo_fast/runtime.py)
        hidden, weight, bias = self.runtime.loss_operands(hidden, *lm_head_params(self.model))
        if loss_inputs is None:
            from g2rpo_fast.ops import fused_linear_logps

            return fused_linear_logps(hidden, weight, batch.token_ids, bias=bias, temperature=self.temperature).float()
        return self.loss_fn(hidden, weight, bias, **loss_inputs)


@torch.no_grad()
def policy_logps(model, batch: PackedBatch, runtime, temperature=1.0) -> torch.Tensor:
    """Per-token log-probs `[N]` (fp32) of `batch`'s completion tokens under `model` (the old or
    the reference policy; a causal LM or its `PackedPolicy`), computed as the training forward
    computes them (same autocast and loss operands, runtime.py) so the ratio is exactly 1 before
    an update; `fused_linear_logps` never holds the [N, V] logits."""
    policy = model if isinstance(model, PackedPolicy) else PackedPolicy(model, runtime, temperature=temperature)
    return policy(batch)


def make_loss_fn(config):
    """The loss through FusedLinearG2RPOLoss: hidden states and lm_head in, no [N, V] logits."""
    import dataclasses

    from g2rpo_fast.loss import FusedLinearG2RPOLoss

    fn = FusedLinearG2RPOLoss(**dataclasses.asdict(config.loss_options()))

    def fused(hidden, weight, bias, **kw):
        return fn(hidden, weight, kw.pop("token_ids"), bias=bias, **kw)

    return fused
