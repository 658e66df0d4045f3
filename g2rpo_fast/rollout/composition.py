"""Guided group composition (DESIGN.md section 1).

For each prompt, `G` samples; the first `n_guided` of the group are guided: the first `ℓ`
tokens of the reference solution (tokenized without special tokens; all of it when shorter,
never padded) are appended to the prompt, and the model continues from there. A guided
completion is `guidance tokens + generated tokens`; `guidance_mask` marks the guidance part.

`n_guided` is `G2RPOConfig.n_guided`. `build_generation_inputs` gives the token lists to send
to the roll-out engine;
`assemble_samples` joins them with the engine's outputs into `Sample` records.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Sample:
    """One completion of a group, ready for rewards and the loss."""

    prompt_index: int  # which prompt of the batch
    prompt_ids: list[int]
    guidance_ids: list[int]  # empty when unguided
    generated_ids: list[int] = field(default_factory=list)
    truncated: bool = False  # the generation hit the length limit without a stop token
    text: str = ""  # decode(guidance + generated), what the rewards see
    entropy: float | None = None  # mean sampling entropy over the generated tokens (when the engine tracked it)

    @property
    def guided(self) -> bool:
        return len(self.guidance_ids) > 0

    @property
    def completion_ids(self) -> list[int]:
        return self.guidance_ids + self.generated_ids

    @property
    def guidance_mask(self) -> list[int]:
        return [1] * len(self.guidance_ids) + [0] * len(self.generated_ids)

    @property
    def generation_input(self) -> list[int]:
        return self.prompt_ids + self.guidance_ids


def guidance_prefix(solution_ids: list[int], length: int) -> list[int]:
    """The first `length` solution tokens; the whole solution when shorter (never padded)."""
    if length < 0:
        raise ValueError(f"guidance length must be >= 0, got {length}")
    return list(solution_ids[:length])


def build_generation_inputs(prompt_ids: list[list[int]], solution_ids: list[list[int]] | None, group_size: int,
                            n_guided: int, guidance_length: int) -> list[Sample]:
    """`len(prompt_ids) * group_size` samples, group by group; guided ones first in each group.

    With `n_guided == 0` or `guidance_length == 0` no sample is guided (vanilla GRPO).
    """
    if not 0 <= n_guided <= group_size:
        raise ValueError(f"n_guided ({n_guided}) must lie in [0, group_size={group_size}]")
    if n_guided and guidance_length and solution_ids is None:
        raise ValueError("guided samples need reference solutions (`solution_ids`)")
    samples = []
    for i, p in enumerate(prompt_ids):
        guide = guidance_prefix(solution_ids[i], guidance_length) if n_guided and guidance_length else []
        for g in range(group_size):
            samples.append(Sample(prompt_index=i, prompt_ids=list(p), guidance_ids=list(guide) if g < n_guided else []))
    return samples


def assemble_samples(samples: list[Sample], outputs, decode, stop_token_ids=()) -> list[Sample]:
    """Fill each sample with the engine's output (`.token_ids`, `.finish_reason`) and its text.

    `decode(ids) -> str` turns guidance + generated ids into the completion text; stop tokens
    are kept in `generated_ids` (they are trained on) but dropped from the text.
    """
    if len(outputs) != len(samples):
        raise ValueError(f"got {len(outputs)} roll-out outputs for {len(samples)} samples")
    stops = set(stop_token_ids)
    for s, out in zip(samples, outputs):
        s.generated_ids = list(out.token_ids)
        s.truncated = getattr(out, "finish_reason", "length") != "stop"
        s.entropy = getattr(out, "entropy", None)
        visible = s.completion_ids
        if visible and visible[-1] in stops:
            visible = visible[:-1]
        s.text = decode(visible)
    return samples
