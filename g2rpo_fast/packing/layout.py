"""Prefix-shared packing: each group's prompt once in the row, followed by its completions.

`pack_samples` (policy_forward.py) repeats the prompt for every completion: `[p, c_1[:-1], p,
c_2[:-1], ...]`, so a group of G completions runs the prompt through the model G times.
`pack_groups` writes it once per group:

    row        [ p (P tokens) | c_1[:-1] | c_2[:-1] | ... | c_G[:-1] ]   then the next group
    positions    0 ... P-1      P ...      P ...            P ...

A group is a run of consecutive samples with the same prompt ids (the trainer's samples come
group by group). The hidden state at the prompt's last position predicts the first token of
every completion of the group; each completion's own positions predict the rest. So the
gathered `[N, H]` hidden states, the completion tokens, masks and `cu_seqlens` are exactly those
of `pack_samples` (same order, same N): the loss cannot tell the two layouts apart.

Attention cannot be read off the position ids any more (every completion restarts at P): the
batch's `shared_prefix` layout says which keys each segment of the row sees, and
`prefix_shared_attention.attention_kwargs` turns it into varlen metadata for a forward. The
layout is plain data (per group: row offset of its prompt, prompt length, lengths of its
completion segments `c_i[:-1]`), so a checkpoint saves it as it saves the tensors.
"""
from __future__ import annotations

from .policy_forward import PackedBatch, packed_batch


def groups_in(layout, start: int, end: int) -> list[tuple[int, int, tuple[int, ...]]]:
    """The groups of `layout` (a `PackedBatch.shared_prefix`) in the row slice [start, end)
    (the row is cut at group boundaries only)."""
    return [g for g in layout if start <= g[0] < end]


def group_runs(samples) -> list[list]:
    """Consecutive samples with the same prompt ids, as lists of samples."""
    runs: list[list] = []
    for s in samples:
        if runs and list(runs[-1][0].prompt_ids) == list(s.prompt_ids):
            runs[-1].append(s)
        else:
            runs.append([s])
    return runs


def pack_groups(samples, device, mask_truncated: bool = False, max_row_tokens: int = 0) -> PackedBatch:
    """The prefix-shared `PackedBatch` of `samples` (arguments as `pack_samples`). With
    `max_row_tokens > 0` the row is cut between groups, never inside one (a group is one
    attention unit), into forwards of at most that many tokens where the groups allow."""
    ids, pos, gather, targets, gmask, cmask, cu = [], [], [], [], [], [], [0]
    layout, splits, row_start = [], [], 0
    for group in group_runs(samples):
        prompt = list(group[0].prompt_ids)
        if not prompt:
            raise ValueError("a sample has an empty prompt")
        p = len(prompt)
        size = p + sum(max(len(s.completion_ids) - 1, 0) for s in group)
        offset = len(ids)
        if max_row_tokens and offset > row_start and offset + size - row_start > max_row_tokens:
            splits.append(offset)
            row_start = offset
        ids.extend(prompt)
        pos.extend(range(p))
        segments = []
        for s in group:
            completion = list(s.completion_ids)
            seg = completion[:-1]  # the last token predicts nothing
            start = len(ids)
            if completion:  # the prompt's last state predicts c[0]; the segment's states the rest
                gather.append(offset + p - 1)
                gather.extend(range(start, start + len(seg)))
            ids.extend(seg)
            pos.extend(range(p, p + len(seg)))
            segments.append(len(seg))
            targets.extend(completion)
            gmask.extend(s.guidance_mask)
            keep = 0 if (mask_truncated and s.truncated) else 1
            cmask.extend([keep] * len(completion))
            cu.append(cu[-1] + len(completion))
        layout.append((offset, p, tuple(segments)))
    return packed_batch(device, ids, pos, gather, targets, gmask, cmask, cu, splits, shared_prefix=tuple(layout))
