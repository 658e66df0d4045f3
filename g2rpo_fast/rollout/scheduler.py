"""Continuous batching: admit waiting prompts (prefill) when they fit, else decode.

Limits: `max_num_seqs` running sequences, `max_num_batched_tokens` computed prompt tokens per
prefill step, and the KV blocks of the block manager. When a decode step runs out of blocks
the most recently admitted sequence is preempted: its blocks are freed and it is prefilled
again later over all of its tokens (recompute; its next token draws the same random number:
the sampler's counter is the number of tokens it has generated).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .block_manager import BlockManager
from .sequence import Sequence, SequenceStatus


@dataclass
class RolloutStats:
    """Counters of the last `generate` call (the engine resets them per call)."""

    prompt_tokens: int = 0  # tokens of all prompts as submitted
    prefill_tokens: int = 0  # prompt tokens actually run through the model
    cached_prefill_tokens: int = 0  # prompt tokens whose KV came from shared blocks
    generated_tokens: int = 0
    prefill_steps: int = 0
    decode_steps: int = 0
    preemptions: int = 0


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 stats: RolloutStats):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.stats = stats
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def is_finished(self) -> bool:
        return not self.waiting and not self.running

    def schedule(self) -> tuple[list[Sequence], bool]:
        bm = self.block_manager
        scheduled: list[Sequence] = []
        num_tokens = 0
        while self.waiting and len(self.running) + len(scheduled) < self.max_num_seqs:
            seq = self.waiting[0]
            new_tokens = len(seq) - bm.num_cached_prefix_tokens(seq)
            if scheduled and num_tokens + new_tokens > self.max_num_batched_tokens:
                break
            if not bm.can_allocate(seq):
                if not scheduled and not self.running:
                    raise RuntimeError(
                        f"KV cache too small: a sequence of {len(seq)} tokens needs "
                        f"{seq.num_blocks(bm.block_size)} blocks, {bm.num_free_blocks} free; "
                        "raise num_kv_blocks / kv_cache_bytes")
                break
            self.waiting.popleft()
            bm.allocate(seq)
            num_tokens += len(seq) - seq.num_cached_tokens
            self.stats.prefill_tokens += len(seq) - seq.num_cached_tokens
            self.stats.cached_prefill_tokens += seq.num_cached_tokens
            seq.status = SequenceStatus.RUNNING
            scheduled.append(seq)
        if scheduled:
            self.running.extend(scheduled)
            self.stats.prefill_steps += 1
            return scheduled, True

        bs = bm.block_size
        while self.running:
            seq = self.running.popleft()
            if len(seq.token_ids) <= len(seq.block_table) * bs:  # fast path: room in its last block
                scheduled.append(seq)
                continue
            while not bm.can_append(seq):
                if self.running:
                    self._preempt(self.running.pop())
                else:
                    self._preempt(seq)
                    break
            else:
                bm.may_append(seq)
                scheduled.append(seq)
        self.running.extend(scheduled)
        if scheduled:
            self.stats.decode_steps += 1
        return scheduled, False

    def _preempt(self, seq: Sequence) -> None:
        self.stats.preemptions += 1
        seq.status = SequenceStatus.WAITING
        self.block_manager.deallocate(seq)
        self.waiting.appendleft(seq)

    def postprocess(self, seqs: list[Sequence], token_ids: list[int], logprobs: list[float] | None,
                    entropies: list[float] | None = None) -> None:
        finished = []
        for i, (seq, tok) in enumerate(zip(seqs, token_ids)):
            seq.append(tok, None if logprobs is None else logprobs[i], None if entropies is None else entropies[i])
            if seq.is_done():
                seq.status = SequenceStatus.FINISHED
                self.block_manager.deallocate(seq)
                finished.append(seq)
        self.stats.generated_tokens += len(seqs)
        if finished:  # one pass over the running queue, not one per finished sequence
            done = set(map(id, finished))
            self.running = deque(s for s in self.running if id(s) not in done)
