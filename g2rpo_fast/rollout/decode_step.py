"""The decode step over static buffers: what a CUDA graph captures and replays.

A decode step of B running sequences reads, besides the weights and the KV cache, a few small
per-sequence tensors: the last token, its position and cache slot, the block table, the
context length, and the sampler's seed and counter. `StaticDecode` keeps them in buffers that
never move, sized for batch-size buckets (1, 2, 4, ... up to `max_seqs`), and runs the step
(forward, then sampling) on views of them: one host-to-device copy fills a bucket's buffers,
the step reads nothing else and makes no host sync, and its output tokens and log-probs stay
on the device until the engine fetches them (the step's one sync).

- `capture=True` (CUDA, `cuda_graphs`): the first step of each bucket in a `generate` call is
  run once eagerly (warm-up: Triton's compile, autocast's cast cache) and then captured in a
  `torch.cuda.CUDAGraph` (one memory pool for all buckets); later steps of that size replay
  it. The graphs live for one call: under autocast they read the call's cached 16-bit weight
  casts, which the next call (after an optimizer step) makes anew.
- `capture=False`: the same buffers and step, run eagerly: what the CPU tests check (greedy
  parity with HF `generate`, seeds) and compile with `torch.compile(fullgraph=True)`.

Rows past the batch (up to the bucket) are padding: token 0 at position 0, context length 1,
writing their K/V into a scratch block that no sequence owns.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .backends import StepMetadata
from .sampler import SamplingSpec, sample_tokens
from .sequence import Sequence


def buckets_up_to(max_seqs: int) -> list[int]:
    """Batch sizes that get their own buffers (and graph): powers of two, then `max_seqs`."""
    sizes, b = [], 1
    while b < max_seqs:
        sizes.append(b)
        b *= 2
    return [*sizes, max_seqs]


@dataclass
class DecodeInputs:
    """Views of one bucket's static buffers (all on the model's device)."""

    input_ids: torch.Tensor  # [b] int64
    positions: torch.Tensor  # [b] int64
    slot_mapping: torch.Tensor  # [b] int64
    ctx_lens: torch.Tensor  # [b] int32
    block_tables: torch.Tensor  # [b, width] int32
    seeds: torch.Tensor  # [b] int64
    counters: torch.Tensor  # [b] int64


class StaticDecode:
    def __init__(self, runner, spec: SamplingSpec, max_seqs: int, width: int, scratch_block: int,
                 capture: bool):
        self.runner = runner
        self.spec = spec
        self.width = width
        self.scratch_block = scratch_block
        self.capture = capture
        self.buckets = buckets_up_to(max_seqs)
        dev = runner.device
        self.flat = torch.zeros(self._size(max_seqs), dtype=torch.long, device=dev)
        self.staging = torch.zeros(self._size(max_seqs), dtype=torch.long, pin_memory=dev.type == "cuda")
        self.inputs = {b: self._views(b) for b in self.buckets}
        self.graphs: dict[int, tuple] = {}
        self.pool = None

    def _size(self, b: int) -> int:
        return b * (6 + self.width)

    def _views(self, b: int) -> DecodeInputs:
        """The buffers of bucket `b`: consecutive slices of one flat int64 buffer (int32 ones are
        copies made inside the step, so the whole input is one copy)."""
        ids, pos, slots, ctx, seeds, counters, tables = self.flat[:self._size(b)].split([b] * 6 + [b * self.width])
        return DecodeInputs(ids, pos, slots, ctx, tables.view(b, self.width), seeds, counters)

    def bucket_for(self, n: int) -> int | None:
        return next((b for b in self.buckets if b >= n), None)

    def _fill(self, seqs: list[Sequence], b: int) -> None:
        """One host-to-device copy: the running sequences' step inputs, then padding rows."""
        bs = self.runner.block_size
        pad = b - len(seqs)
        last = [len(s) - 1 for s in seqs]
        columns = [
            [s.token_ids[-1] for s in seqs] + [0] * pad,
            last + [0] * pad,
            [s.block_table[p // bs] * bs + p % bs for s, p in zip(seqs, last)] + [self.scratch_block * bs] * pad,
            [len(s) for s in seqs] + [1] * pad,
            [s.seed for s in seqs] + [0] * pad,
            [s.num_completion_tokens for s in seqs] + [0] * pad,
        ]
        tables = [t for s in seqs for t in s.block_table + [0] * (self.width - len(s.block_table))]
        tables += [self.scratch_block] * (pad * self.width)
        values = [x for col in columns for x in col] + tables
        host = self.staging[:len(values)]
        host.copy_(torch.tensor(values, dtype=torch.long))
        self.flat[:len(values)].copy_(host, non_blocking=True)

    def step(self, inputs: DecodeInputs):
        """Forward and sampling over one bucket's buffers: (tokens [b], logprobs [b] or None)."""
        runner = self.runner
        meta = StepMetadata(
            is_prefill=False, has_cached=False, block_size=runner.block_size, scale=runner.scale,
            q_lens=torch.ones_like(inputs.ctx_lens, dtype=torch.int32), ctx_lens=inputs.ctx_lens.int(),
            cu_seqlens_q=None, cu_seqlens_k=None, max_q=1, max_k=self.width * runner.block_size,
            slot_mapping=inputs.slot_mapping, block_tables=inputs.block_tables.int(),
            seeds=inputs.seeds, counters=inputs.counters)
        logits = runner.forward(inputs.input_ids, inputs.positions, meta)
        return sample_tokens(logits, inputs.seeds, inputs.counters, self.spec)

    def run(self, seqs: list[Sequence]):
        """The step for `seqs` (at most the largest bucket): device (tokens, logprobs) of them."""
        n = len(seqs)
        b = self.bucket_for(n)
        self._fill(seqs, b)
        if not self.capture:
            tokens, logprobs = self.step(self.inputs[b])
        else:
            if b not in self.graphs:
                self.graphs[b] = self._capture(b)
            graph, (tokens, logprobs) = self.graphs[b]
            graph.replay()
        return tokens[:n], (None if logprobs is None else logprobs[:n])

    def _capture(self, b: int):
        """Warm the step up on a side stream, then capture it (CUDA only)."""
        inputs = self.inputs[b]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.step(inputs)
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.step(inputs)
        return graph, out
