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
    # what was generated for it (`rollout.dynamic_sampling.sample_with_signal`'s statistics):
    # rounds, groups, groups without signal, sum of the guidance reward; plain numbers
    sampling: dict | None = None

    def loss_inputs(self) -> dict:
        """The keyword arguments of `FusedLinearG2RPOLoss` (besides hidden states and weights)."""
        p = self.packed
        return dict(token_ids=p.token_ids, advantages=self.advantages, completion_mask=p.completion_mask,
                    guidance_mask=p.guidance_mask, cu_seqlens=p.cu_seqlens, old_logps=self.old_logps,
                    ref_logps=self.ref_logps)

    def state_dict(self) -> dict:
        cpu = lambda t: None if t is None else t.cpu()
        return {"samples": [dataclasses.asdict(s) for s in self.samples],
                "scores": dataclasses.asdict(self.scores),
                "packed": {f.name: _map_tensors(getattr(self.packed, f.name), cpu)
                           for f in dataclasses.fields(PackedBatch)},
                "advantages": cpu(self.advantages), "old_logps": cpu(self.old_logps), "ref_logps": cpu(self.ref_logps),
                "sampling": self.sampling}

    @classmethod
    def from_state_dict(cls, state: dict, device) -> RolloutBatch:
        to = lambda t: None if t is None else t.to(device)
        return cls(samples=[Sample(**s) for s in state["samples"]], scores=Scores(**state["scores"]),
                   packed=PackedBatch(**{k: _map_tensors(v, to) for k, v in state["packed"].items()}),
                   advantages=to(state["advantages"]), old_logps=to(state["old_logps"]),
                   ref_logps=to(state["ref_logps"]), sampling=state.get("sampling"))


def kept_groups(rounds, group_size: int) -> tuple[list[Sample], Scores]:
    """The groups dynamic sampling kept, round after round, as one micro-batch's samples and
    scores (prompt indices renumbered group by group); when no round kept any, the last round
    as generated (a batch without signal)."""
    samples, parts = [], []
    for round_samples, scores, keep in rounds:
        picked = [i for g in keep for i in range(g * group_size, (g + 1) * group_size)]
        samples += [round_samples[i] for i in picked]
        parts.append(scores.select(picked))
    if not samples:
        round_samples, scores, _ = rounds[-1]
        samples, parts = list(round_samples), [scores]
    samples = [dataclasses.replace(s, prompt_index=j // group_size) for j, s in enumerate(samples)]
    return samples, Scores.concat(parts)


def _map_tensors(value, fn):
    return fn(value) if isinstance(value, torch.Tensor) else value


def build_rollout_batch(samples: list[Sample], scores: Scores, config, runtime, model, ref_model=None,
                        prefix_shared: bool = False, align_forwards=None) -> RolloutBatch:
    """Advantages, packing (each group's prompt once in the row with `prefix_shared`, else once per
    sample), and old / reference log-probs of one generated micro-batch. `model`, `ref_model`: causal
    LMs or their `PackedPolicy`; `align_forwards(packed)`: agree with the other ranks on the number
    of model calls (FSDP, `parallel.equal_forward_count`) before any forward."""
    from g2rpo_fast.ops import group_advantages

    device = runtime.device
    advantages = group_advantages(torch.tensor(scores.total, dtype=torch.float32), config.num_generations,
                                  config.scale_rewards)
    row_tokens = config.packed_row_tokens if config.packed_row_tokens >= 0 else (0 if device.type == "cuda" else 512)
    pack = pack_groups if prefix_shared else pack_samples
    packed = pack(samples, device, config.mask_truncated_completions, row_tokens)
    if align_forwards is not None:
        align_forwards(packed)
    batch = RolloutBatch(samples, scores, packed, advantages.to(device))
    if config.num_iterations > 1:
        batch.old_logps = policy_logps(model, packed, runtime, config.temperature)
    if ref_model is not None:
        batch.ref_logps = policy_logps(ref_model, packed, runtime, config.temperature)
    return batch
