"""Padding-free policy forward: all sequences of a micro-batch packed into one row.

Each sample's `prompt + completion[:-1]` is concatenated into `input_ids [1, ΣL]` with
`position_ids` restarting at 0 per sequence and no attention mask. The trainer installs the
varlen attention of `packed_attention.py`: each sequence attends only to itself through a
varlen kernel and no [ΣL, ΣL] mask is ever built (`PolicyHidden` passes the row's
`cu_seqlens`, computed once from the position ids). A model left on HF's own attention gets
transformers' block-diagonal mask from the same position ids instead (correct, but ΣL²).
tests/test_trainer_packed.py checks both against per-sequence forwards. The hidden states at
the positions that predict completion tokens (guidance tokens included, as context for the
loss's guidance mask) are gathered into `[N, H]`, the packed layout of the loss with
`cu_seqlens` over completions.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [1, ΣL]
    position_ids: torch.Tensor  # [1, ΣL]
    gather_index: torch.Tensor  # [N] positions in the row whose hidden state predicts a completion token
    token_ids: torch.Tensor  # [N] completion tokens (guidance + generated)
    guidance_mask: torch.Tensor  # [N] 1 on guidance tokens
    completion_mask: torch.Tensor  # [N] 0 on tokens of masked (truncated) completions
    cu_seqlens: torch.Tensor  # [S+1] int32 offsets of each completion in the N tokens
    row_splits: tuple = ()  # sequence-boundary offsets in ΣL where the row is cut into forwards
    shared_prefix: tuple | None = None  # each group's prompt once in the row: its layout (group_packing.py)
    # model calls to make at least (1-token dummies after the real ones): under FSDP every rank
    # must call each layer as often as the others (parallel.equal_forward_count)
    num_forwards: int = 0

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.numel())


def pack_samples(samples, device, mask_truncated: bool = False, max_row_tokens: int = 0) -> PackedBatch:
    """`max_row_tokens > 0` cuts the packed row (at sequence boundaries) into forwards of at most
    that many tokens (bounds the attention of a model left on HF's dense-mask attention, which
    is quadratic in ΣL); 0: one row (the varlen attention costs Σ L_i² either way)."""
    ids, pos, gather, targets, gmask, cmask, cu = [], [], [], [], [], [], [0]
    offset, splits, row_start = 0, [], 0
    for s in samples:
        prompt, completion = list(s.prompt_ids), list(s.completion_ids)
        if not prompt:
            raise ValueError("a sample has an empty prompt")
        seq = prompt + completion[:-1]  # the last token predicts nothing
        if max_row_tokens and offset > row_start and offset + len(seq) - row_start > max_row_tokens:
            splits.append(offset)
            row_start = offset
        ids.extend(seq)
        pos.extend(range(len(seq)))
        p = len(prompt)
        gather.extend(offset + p - 1 + j for j in range(len(completion)))
        targets.extend(completion)
        gmask.extend(s.guidance_mask)
        keep = 0 if (mask_truncated and s.truncated) else 1
        cmask.extend([keep] * len(completion))
        cu.append(cu[-1] + len(completion))
        offset += len(seq)
    return packed_batch(device, ids, pos, gather, targets, gmask, cmask, cu, splits)


def packed_batch(device, ids, pos, gather, targets, gmask, cmask, cu, splits, shared_prefix=None) -> PackedBatch:
    """The tensors of a packed row from the Python lists the two packers build (per sample here,
    per group in group_packing.py)."""
    as_long = lambda x: torch.tensor(x, dtype=torch.long, device=device)
    return PackedBatch(
        input_ids=as_long(ids).unsqueeze(0),
        position_ids=as_long(pos).unsqueeze(0),
        gather_index=as_long(gather),
        token_ids=as_long(targets),
        guidance_mask=as_long(gmask),
        completion_mask=torch.tensor(cmask, dtype=torch.float32, device=device),
        cu_seqlens=torch.tensor(cu, dtype=torch.int32, device=device),
        row_splits=tuple(splits),
        shared_prefix=shared_prefix,
    )


def decoder_of(model):
    """The transformer body (without lm_head) of a causal LM."""
    core = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    if core is None:
        core = model.get_decoder()
    return core


def lm_head_params(model):
    head = model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


class PolicyHidden(torch.nn.Module):
    """`forward(input_ids, position_ids) -> last hidden states [1, ΣL, H]` of a causal LM.

    A module of its own so DDP can wrap it (its forward is what DDP hooks into).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, attention_kwargs=None):
        """`attention_kwargs`: the varlen metadata of the row (default: sequences delimited by
        the position ids; a prefix-shared row brings its own, `prefix_shared_attention.py`)."""
        from .packed_attention import packed_attention_kwargs

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
            from .prefix_shared_attention import attention_kwargs

            kwargs = attention_kwargs(batch.shared_prefix, a, b, batch.input_ids.device)
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

    def __init__(self, model, runtime, loss_fn=None, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.runtime = runtime
        self.loss_fn = loss_fn
        self.temperature = temperature

    def forward(self, batch: PackedBatch, loss_inputs: dict | None = None):
        hidden = packed_hidden(PolicyHidden(self.model), batch, self.runtime.autocast_dtype)
        # the loss's matmuls in the compute dtype, its accumulation in fp32 (runtime.py)
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
