"""Dense K/V working set for CPU decode, kept up to date one token per step.

Gathering every sequence's K/V out of the paged cache at each decode step copies the whole
context (O(context) bytes per token, every step); on CPU that copy cost as much as the
attention itself. Instead, when the decode batch is formed, its K/V is gathered once into
padded dense buffers and each later step appends only the new token (its K/V still goes to
the paged cache too, which stays the source of truth for prefill, prefix sharing and
preemption). The buffers are rebuilt from the paged cache only when a new sequence joins the
batch, when a row outgrows its capacity, or when finished rows make up a quarter of them
(their rows stay in place, masked, until then, so one stopped sequence copies nothing).

Shared prompt blocks are kept once per group (the sequences whose block tables start with
the same blocks: the G samples of a GRPO prompt, guided or not): a `prefix` buffer
[layers, Hkv, groups, P, D] read by the queries of the whole group in one matmul, and a
per-row `suffix` buffer [layers, Hkv, rows, capacity, D] for the rest. A group's prefix is
then read once per step instead of once per sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .sequence import Sequence

_COMPACT_DEAD_FRACTION = 0.25
_MAX_BUFFER_BYTES = 2 << 30  # beyond this, fall back to the per-step gather
# a shared prefix is split out only when it saves at least this many keys per row (the
# split costs a few extra small ops per layer)
_MIN_SAVED_KEYS_PER_ROW = 32


@dataclass
class DecodeStep:
    """Per-step tensors of the dense decode path, shared by all layers."""

    dense_slots: torch.Tensor  # [B] flat (row, suffix position) of each new token's K/V
    rows: torch.Tensor | None  # [B] buffer row of each query; None: query b is row b, R == B
    key_mask: torch.Tensor  # [R, 1, P + keys] True where a prefix / suffix key is in context
    prefix_keys: int  # P (0: no shared-prefix buffer)
    row_slots: torch.Tensor | None  # [R] slot (group * max_group + member) of each row
    slot_rows: torch.Tensor | None  # [groups * max_group] row of each slot (padding: row 0)
    max_group: int


class DecodeBuffer:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, block_size: int,
                 dtype: torch.dtype, device: torch.device):
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.block_size = block_size
        self.dtype = dtype
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.k = self.v = None  # suffix [layers, Hkv, rows, capacity, D]
        self.k_prefix = self.v_prefix = None  # [layers, Hkv, groups, P, D] or None
        self.row_of: dict[int, int] = {}  # seq_id -> row
        self.capacity = 0
        self.row_prefix: list[int] = []  # shared-prefix tokens of each row (0: none)
        self.prefix_len_t: torch.Tensor | None = None
        self.row_slots = self.slot_rows = None
        self.max_group = 0

    def _rows(self, seqs: list[Sequence]) -> tuple[list[int], list[int], list[int]] | None:
        """(rows, positions, dense slots) of this step's new tokens, or None: rebuild first."""
        row_of, prefix, capacity = self.row_of, self.row_prefix, self.capacity
        if self.k is None or len(seqs) < (1 - _COMPACT_DEAD_FRACTION) * len(row_of):
            return None
        rows, positions, dense_slots = [], [], []
        for s in seqs:
            r = row_of.get(s.seq_id)
            pos = len(s.token_ids) - 1
            if r is None or pos - prefix[r] >= capacity:
                return None
            rows.append(r)
            positions.append(pos)
            dense_slots.append(r * capacity + pos - prefix[r])
        return rows, positions, dense_slots

    def step(self, seqs: list[Sequence], k_cache: torch.Tensor, v_cache: torch.Tensor) -> DecodeStep | None:
        """Make the buffers hold every sequence of this decode step and describe the step.

        Before the step a row holds the K/V of tokens 0 .. len(seq) - 2; `None` when the
        buffers would be too large (the caller gathers from the paged cache instead).
        """
        found = self._rows(seqs)
        if found is None:
            if not self._rebuild(seqs, k_cache, v_cache):
                return None
            found = self._rows(seqs)
            if found is None:  # cannot happen after a rebuild; stay safe
                return None
        rows, positions, dense_slots = found
        dev = self.device
        num_rows = len(self.row_of)
        identity = num_rows == len(seqs) and rows == list(range(num_rows))
        rows_t = None if identity else torch.tensor(rows, device=dev)
        lens_now = torch.tensor(positions, device=dev) + 1
        if identity:
            lens = lens_now
        else:  # rows of finished sequences keep one key so no softmax row is empty
            lens = torch.ones(num_rows, dtype=torch.long, device=dev).index_copy_(0, rows_t, lens_now)
        suffix_lens = lens if self.k_prefix is None else lens - self.prefix_len_t
        # the longest suffix, from the host's positions (finished rows keep one key, so they
        # never need more than the live ones): no device-to-host read
        keys = max(1, max(p + 1 - self.row_prefix[r] for r, p in zip(rows, positions)))
        mask = torch.arange(keys, device=dev)[None, :] < suffix_lens[:, None]
        prefix_keys = 0
        if self.k_prefix is not None:
            prefix_keys = self.k_prefix.shape[3]
            prefix_mask = torch.arange(prefix_keys, device=dev)[None, :] < self.prefix_len_t[:, None]
            mask = torch.cat([prefix_mask, mask], dim=1)
        return DecodeStep(torch.tensor(dense_slots, device=dev), rows_t, mask[:, None, :], prefix_keys,
                          self.row_slots, self.slot_rows, self.max_group)

    def _groups(self, seqs: list[Sequence]) -> tuple[list[list[int]], list[int]]:
        """Sequences grouped by their leading shared blocks; each group's shared block count."""
        by_first: dict[int, list[int]] = {}
        for i, s in enumerate(seqs):
            by_first.setdefault(s.block_table[0], []).append(i)
        groups, shared = [], []
        for members in by_first.values():
            n = 0
            if len(members) > 1:
                tables = [seqs[i].block_table for i in members]
                # a block id in the same place of two tables is one physical block, so the
                # common leading ids are full, immutable prompt blocks
                n = min(map(len, tables))
                for t in tables[1:]:
                    n = next((j for j in range(n) if t[j] != tables[0][j]), n)
                # never the block the next token is written to (full blocks only are shared,
                # but keep the rule explicit)
                n = min(n, min((len(seqs[i]) - 1) // self.block_size for i in members))
            groups.append(members)
            shared.append(n)
        return groups, shared

    def _rebuild(self, seqs: list[Sequence], k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
        bs = self.block_size
        groups, shared = self._groups(seqs)
        saved = sum((len(m) - 1) * n * bs for m, n in zip(groups, shared))
        use_prefix = saved >= _MIN_SAVED_KEYS_PER_ROW * len(seqs)
        if not use_prefix:
            groups, shared = [list(range(len(seqs)))], [0]
        # rows are laid out group by group
        order = [i for m in groups for i in m]
        by_index, seqs = seqs, [seqs[i] for i in order]
        row_blocks = [n for m, n in zip(groups, shared) for _ in m]
        # room for the rest of each completion (bounded by the model's context), in whole blocks
        final = [min(len(s) + s.params.max_new_tokens - s.num_completion_tokens, s.max_len) for s in seqs]
        capacity_blocks = max((f + bs - 1) // bs - n for f, n in zip(final, row_blocks))
        prefix_blocks = max(shared)
        rows = len(seqs)
        elem = torch.tensor([], dtype=self.dtype).element_size()
        per_token = 2 * self.num_layers * self.num_kv_heads * self.head_dim * elem
        if per_token * bs * (rows * capacity_blocks + len(groups) * prefix_blocks) > _MAX_BUFFER_BYTES:
            self.reset()
            return False
        suffix_table = torch.zeros(rows, capacity_blocks, dtype=torch.long)
        for r, (s, n) in enumerate(zip(seqs, row_blocks)):
            suffix_table[r, :len(s.block_table) - n] = torch.tensor(s.block_table[n:], dtype=torch.long)
        self.reset()
        self.k, self.v = self._gather(k_cache, v_cache, suffix_table)
        self.capacity = capacity_blocks * bs
        self.row_of = {s.seq_id: r for r, s in enumerate(seqs)}
        self.row_prefix = [n * bs for n in row_blocks]
        if use_prefix:
            prefix_table = torch.zeros(len(groups), prefix_blocks, dtype=torch.long)
            for g, (m, n) in enumerate(zip(groups, shared)):
                prefix_table[g, :n] = torch.tensor(by_index[m[0]].block_table[:n], dtype=torch.long)
            self.k_prefix, self.v_prefix = self._gather(k_cache, v_cache, prefix_table)
            self.prefix_len_t = torch.tensor(self.row_prefix, device=self.device)
            self.max_group = max(map(len, groups))
            slot_rows = [0] * (len(groups) * self.max_group)
            row_slots, r = [], 0
            for g, m in enumerate(groups):
                for j in range(len(m)):
                    slot_rows[g * self.max_group + j] = r
                    row_slots.append(g * self.max_group + j)
                    r += 1
            self.row_slots = torch.tensor(row_slots, device=self.device)
            self.slot_rows = torch.tensor(slot_rows, device=self.device)
        return True

    def _gather(self, k_cache: torch.Tensor, v_cache: torch.Tensor, table: torch.Tensor):
        """Gather [layers, Hkv, n, blocks * block_size, D] from the paged cache for a block table.

        Padding entries of `table` point at block 0: finite values (the cache is
        zero-initialised), so masked columns enter the matmuls with probability 0, never NaN.
        """
        bs = self.block_size
        num_layers, num_kv_heads, num_blocks = k_cache.shape[:3]
        n, width = table.shape
        shape = (num_layers, num_kv_heads, n, width * bs, self.head_dim)
        # one row per (layer, kv head, block): whole-row memcpy gathers
        lh = torch.arange(num_layers * num_kv_heads)[:, None] * num_blocks
        index = (lh + table.view(1, -1)).view(-1).to(self.device)
        out = []
        for cache in (k_cache, v_cache):
            buf = torch.empty(shape, dtype=self.dtype, device=self.device)  # every element is written
            torch.index_select(cache.view(num_layers * num_kv_heads * num_blocks, -1), 0, index,
                               out=buf.view(-1, bs * self.head_dim))
            out.append(buf)
        return out
