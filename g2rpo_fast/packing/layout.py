"""The packed layout: one row per micro-batch, no padding, and what each token of it attends to.

Every module of the packed forward reads this one; the attention (`packed_attention.py`,
`prefix_shared_attention.py`) and the forward (`policy_forward.py`) build nothing of their own.

**Per sample** (`pack_samples`): each sample's `prompt + completion[:-1]` is concatenated into
`input_ids [1, ΣL]` with `position_ids` restarting at 0 per sequence and no attention mask.
A sequence starts wherever the position is not the previous one + 1
(`cu_seqlens_from_position_ids`, HF's packed-sequence rule), so the varlen metadata of such a
row (`packed_attention_kwargs`) is read off its position ids.

**Per group** (`pack_groups`, `prefix_shared_forward`): `pack_samples` repeats the prompt for
every completion: `[p, c_1[:-1], p, c_2[:-1], ...]`, so a group of G completions runs the prompt
through the model G times. `pack_groups` writes it once per group:

    row        [ p (P tokens) | c_1[:-1] | c_2[:-1] | ... | c_G[:-1] ]   then the next group
    positions    0 ... P-1      P ...      P ...            P ...

A group is a run of consecutive samples with the same prompt ids (the trainer's samples come
group by group). The hidden state at the prompt's last position predicts the first token of
every completion of the group; each completion's own positions predict the rest. So the
gathered `[N, H]` hidden states, the completion tokens, masks and `cu_seqlens` are exactly those
of `pack_samples` (same order, same N): the loss cannot tell the two layouts apart.

Attention cannot be read off the position ids any more (every completion restarts at P): the
batch's `shared_prefix` layout says which keys each segment of the row sees, and
`prefix_shared_attention_kwargs` turns it into varlen metadata for a forward: the queries are
cut into segments (the prompt, then each completion), and each segment's keys are *gathered*,
the prompt's in front of each completion's own,

    queries   [ p | s_1      | s_2      | ... ]          cu_seqlens_q: the row's segments
    keys      [ p | p  s_1   | p  s_2   | ... ]          cu_seqlens_k: P, P + |s_1|, ...

by the index `KEY_INDEX_KWARG` (applied per layer by `gather_shared_keys`). The layout is plain
data (per group: row offset of its prompt, prompt length, lengths of its completion segments
`c_i[:-1]`), so a checkpoint saves it as it saves the tensors.

Both packers gather, at the positions that predict completion tokens (guidance tokens
included, as context for the loss's guidance mask), the `[N, H]` packed layout of the loss, with
`cu_seqlens` over completions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# The key gather index of a prefix-shared forward, passed with the cu_seqlens through the
# decoder's kwargs, as transformers passes `cu_seq_lens_q/k` to attention functions.
KEY_INDEX_KWARG = "prefix_shared_key_index"


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
    shared_prefix: tuple | None = None  # each group's prompt once in the row: its layout (`pack_groups`)
    # model calls to make at least (1-token dummies after the real ones): under FSDP every rank
    # must call each layer as often as the others (distributed/parallel.py, equal_forward_count)
    num_forwards: int = 0

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.numel())


# ---------------------------------------------------------------------------- per sample
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
    """The tensors of a packed row from the Python lists the two packers build (per sample,
    `pack_samples`, or per group, `pack_groups`)."""
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


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cu_seqlens [S+1] int32, longest length) of a packed row [1, L]: a sequence starts
    wherever the position is not the previous one + 1 (HF's packed-sequence rule)."""
    pos = position_ids.reshape(-1)
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[1:] = pos[1:] != pos[:-1] + 1
    bounds = torch.nonzero(starts).view(-1)
    cu = torch.cat([bounds, bounds.new_tensor([pos.numel()])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max()) if pos.numel() else 0


def packed_attention_kwargs(position_ids: torch.Tensor) -> dict:
    """Keyword arguments of the decoder forward that carry the row's sequence boundaries (the
    names of transformers' FlashAttentionKwargs, so HF's own flash path reads them too)."""
    cu, longest = cu_seqlens_from_position_ids(position_ids)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


# ---------------------------------------------------------------------------- per group (prefix-shared)
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


def prefix_shared_attention_kwargs(layout, start: int, end: int, device) -> dict:
    """Decoder keyword arguments for the row slice [start, end) of a prefix-shared batch:
    cu_seqlens over the query segments and over the gathered keys, and the gather index."""
    q_lens, k_lens, runs = [], [], []  # runs: (first row index, length) of contiguous keys
    for offset, prompt_len, segments in groups_in(layout, start, end):
        prompt = (offset - start, prompt_len)
        q_lens.append(prompt_len)
        k_lens.append(prompt_len)
        runs.append(prompt)
        own = offset - start + prompt_len
        for length in segments:
            if length:  # a one-token completion has no segment: the prompt's last state predicts it
                q_lens.append(length)
                k_lens.append(prompt_len + length)
                runs += [prompt, (own, length)]
            own += length
    run_start = torch.tensor([r[0] for r in runs], dtype=torch.long)
    run_len = torch.tensor([r[1] for r in runs], dtype=torch.long)
    # index = run start + offset within the run, without a Python loop over tokens
    run_first = torch.cumsum(run_len, 0) - run_len
    total = int(run_len.sum())
    key_index = torch.repeat_interleave(run_start - run_first, run_len, output_size=total) + torch.arange(total)
    cu_q = torch.tensor([0, *q_lens], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    cu_k = torch.tensor([0, *k_lens], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return {"cu_seq_lens_q": cu_q.to(device), "cu_seq_lens_k": cu_k.to(device), "max_length_q": max(q_lens),
            "max_length_k": max(k_lens), KEY_INDEX_KWARG: key_index.to(device)}


def gather_shared_keys(key: torch.Tensor, value: torch.Tensor, kwargs: dict):
    """Packed key/value [T, Hkv, D] -> the gathered keys of `prefix_shared_attention_kwargs`
    (unchanged when the forward is not prefix-shared)."""
    index = kwargs.get(KEY_INDEX_KWARG)
    if index is None:
        return key, value
    return key.index_select(0, index), value.index_select(0, index)
