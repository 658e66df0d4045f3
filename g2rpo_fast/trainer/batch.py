"""Phase 2 of a step: a generated micro-batch as the loss's inputs (`RolloutBatch`).

`build_rollout_batch` takes the scored samples of phase 1 and adds what the loss needs: the
group-normalised advantages over all G samples of each prompt (guided and unguided together),
the completions packed into one row for the padding-free forward (`packing.layout.pack_samples`,
or `pack_groups`: each group's prompt once)
and, without gradients, the old policy's log-probs (`num_iterations > 1`: one generated batch
serves μ optimiser steps) and the reference policy's (`beta > 0`).

A batch still to be trained on is saved in checkpoints: `state_dict()` is plain data (lists,
numbers, CPU tensors) and `RolloutBatch.from_state_dict` restores it bit for bit.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from g2rpo_fast.loss.aggregation import piece_scale
from g2rpo_fast.packing.layout import PackedBatch, pack_groups, pack_samples
from g2rpo_fast.packing.policy_forward import policy_logps
from g2rpo_fast.rewards.scoring import Scores
from g2rpo_fast.rollout.composition import Sample


@dataclass
class RolloutBatch:
    samples: list[Sample]
    scores: Scores
    packed: PackedBatch  # the completions as the loss's packed layout, on the training device
    advantages: torch.Tensor  # [S] fp32
    old_logps: torch.Tensor | None = None  # [N] the policy that generated the batch
    ref_logps: torch.Tensor | None = None  # [N] the reference policy (KL)
    # trained in pieces of whole groups (`max_tokens_per_microbatch`): each piece a RolloutBatch
    # of its own with its share of the loss (`loss_scale`) and of the loss metrics (`metric_weight`);
    # then this batch keeps every sample for the step's metrics and `packed` is None
    pieces: list = dataclasses.field(default_factory=list)
    loss_scale: float = 1.0
    metric_weight: float = 1.0

    def training_pieces(self) -> list[RolloutBatch]:
        """What one forward/backward each takes: the pieces, or the whole batch."""
        return self.pieces or [self]

    def loss_inputs(self) -> dict:
        """The keyword arguments of `FusedLinearG2RPOLoss` (besides hidden states and weights)."""
        p = self.packed
        return dict(token_ids=p.token_ids, advantages=self.advantages, completion_mask=p.completion_mask,
                    guidance_mask=p.guidance_mask, cu_seqlens=p.cu_seqlens, old_logps=self.old_logps,
                    ref_logps=self.ref_logps)

    def state_dict(self) -> dict:
        cpu = lambda t: None if t is None else t.cpu()
        packed = None if self.packed is None else {f.name: _map_tensors(getattr(self.packed, f.name), cpu)
                                                   for f in dataclasses.fields(PackedBatch)}
        return {"samples": [dataclasses.asdict(s) for s in self.samples],
                "scores": dataclasses.asdict(self.scores), "packed": packed,
                "advantages": cpu(self.advantages), "old_logps": cpu(self.old_logps), "ref_logps": cpu(self.ref_logps),
                "pieces": [p.state_dict() for p in self.pieces], "loss_scale": self.loss_scale,
                "metric_weight": self.metric_weight}

    @classmethod
    def from_state_dict(cls, state: dict, device) -> RolloutBatch:
        to = lambda t: None if t is None else t.to(device)
        packed = state["packed"]
        if packed is not None:
            packed = PackedBatch(**{k: _map_tensors(v, to) for k, v in packed.items()})
        return cls(samples=[Sample(**s) for s in state["samples"]], scores=Scores(**state["scores"]), packed=packed,
                   advantages=to(state["advantages"]), old_logps=to(state["old_logps"]),
                   ref_logps=to(state["ref_logps"]),
                   pieces=[cls.from_state_dict(p, device) for p in state.get("pieces", ())],
                   loss_scale=state.get("loss_scale", 1.0), metric_weight=state.get("metric_weight", 1.0))


def _map_tensors(value, fn):
    return fn(value) if isinstance(value, torch.Tensor) else value


def build_rollout_batch(samples: list[Sample], scores: Scores, config, runtime, model, ref_model=None,
                        prefix_shared: bool = False, align_forwards=None, max_piece_tokens: int = 0,
                        agree_pieces=None) -> RolloutBatch:
    """Advantages, packing (each group's prompt once in the row with `prefix_shared`, else once per
    sample), and old / reference log-probs of one generated micro-batch. `model`, `ref_model`: causal
    LMs or their `PackedPolicy`; `align_forwards(packed)`: agree with the other ranks on the number
    of model calls (FSDP, `parallel.equal_forward_count`) before any forward.

    `max_piece_tokens > 0`: a micro-batch whose row would hold more tokens is trained in pieces
    of whole groups of at most that many row tokens (a group larger than that is a piece of its
    own), each with its own forward and backward (`RolloutBatch.pieces`); `agree_pieces(count)`
    returns the piece count every rank uses (the largest: the ranks' forwards must match)."""
    from g2rpo_fast.ops import group_advantages

    device = runtime.device
    advantages = group_advantages(torch.tensor(scores.total, dtype=torch.float32), config.num_generations,
                                  config.scale_rewards).to(device)
    groups = split_groups(samples, config.num_generations, prefix_shared, max_piece_tokens)
    if agree_pieces is not None:
        groups = split_groups(samples, config.num_generations, prefix_shared, max_piece_tokens,
                              count=agree_pieces(len(groups)))
    if len(groups) == 1:
        return _packed_piece(samples, scores, advantages, config, runtime, model, ref_model, prefix_shared,
                             align_forwards)
    batch = RolloutBatch(samples, scores, None, advantages)
    whole = _normaliser_terms(samples, config)
    first = 0
    for count in groups:
        part = slice(first, first + count)
        piece = _packed_piece(samples[part], _slice_scores(scores, part), advantages[part], config, runtime, model,
                              ref_model, prefix_shared, align_forwards)
        terms = _normaliser_terms(samples[part], config)
        piece.loss_scale = piece_scale(config.loss_type, terms, whole, num_items_in_batch=(
            1.0 if config.loss_type == "dapo" else None))  # the trainer passes dapo's global count
        piece.metric_weight = terms[1] / max(whole[1], 1e-12) if whole[1] else count / len(samples)
        batch.pieces.append(piece)
        first += count
    return batch


def _packed_piece(samples, scores, advantages, config, runtime, model, ref_model, prefix_shared, align_forwards):
    device = runtime.device
    row_tokens = config.packed_row_tokens if config.packed_row_tokens >= 0 else (0 if device.type == "cuda" else 512)
    pack = pack_groups if prefix_shared else pack_samples
    packed = pack(samples, device, config.mask_truncated_completions, row_tokens)
    if align_forwards is not None:
        align_forwards(packed)
    batch = RolloutBatch(samples, scores, packed, advantages)
    if config.num_iterations > 1:
        batch.old_logps = policy_logps(model, packed, runtime, config.temperature)
    if ref_model is not None:
        batch.ref_logps = policy_logps(ref_model, packed, runtime, config.temperature)
    return batch


def row_tokens_of(group: list[Sample], prefix_shared: bool) -> int:
    """Tokens a group takes in the packed row (`layout.pack_groups` / `pack_samples`)."""
    tails = sum(max(len(s.completion_ids) - 1, 0) for s in group)
    if prefix_shared:
        return len(group[0].prompt_ids) + tails
    return sum(len(s.prompt_ids) for s in group) + tails


def split_groups(samples: list[Sample], group_size: int, prefix_shared: bool, max_tokens: int,
                 count: int | None = None) -> list[int]:
    """Sample counts of consecutive pieces of whole groups: as few as hold at most `max_tokens`
    row tokens each (0: one piece), or exactly `count` pieces (the largest split further)."""
    groups = [samples[i:i + group_size] for i in range(0, len(samples), group_size)]
    sizes = [row_tokens_of(g, prefix_shared) for g in groups]
    pieces: list[list[int]] = []  # group indices
    for i, size in enumerate(sizes):
        if pieces and max_tokens and sum(sizes[j] for j in pieces[-1]) + size <= max_tokens:
            pieces[-1].append(i)
        elif pieces and not max_tokens:
            pieces[-1].append(i)
        else:
            pieces.append([i])
    while count is not None and len(pieces) < count:
        k = max((k for k in range(len(pieces)) if len(pieces[k]) > 1),
                key=lambda k: sum(sizes[j] for j in pieces[k]), default=None)
        if k is None:
            raise ValueError(f"cannot cut {len(groups)} groups into {count} pieces")
        half = len(pieces[k]) // 2
        pieces[k:k + 1] = [pieces[k][:half], pieces[k][half:]]
    return [sum(len(groups[j]) for j in piece) for piece in pieces]


def _normaliser_terms(samples: list[Sample], config) -> tuple[int, float, int]:
    """(sequences, Σ token weights, dr_grpo's length) of `samples`, as the loss counts them."""
    weights = 0.0
    for s in samples:
        if config.mask_truncated_completions and s.truncated:
            continue
        counted = s.completion_ids if config.guidance_loss == "include" else s.generated_ids
        weights += len(counted)
    return len(samples), weights, config.loss_options().max_completion_length or max(
        (len(s.completion_ids) for s in samples), default=0)


def _slice_scores(scores: Scores, part: slice) -> Scores:
    return Scores(**{f.name: _slice_field(getattr(scores, f.name), part) for f in dataclasses.fields(Scores)})


def _slice_field(value, part: slice):
    if isinstance(value, list) and value and isinstance(value[0], list):  # per reward function
        return [v[part] for v in value]
    return value[part] if isinstance(value, list) else value
