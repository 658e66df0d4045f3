"""Fixed-size KV blocks with reference counts and prefix caching by content hash.

Only *full* blocks are shared, so no copy-on-write is needed: a shared block is never
written again. A block is looked up in the cache only when all of its tokens come before the
sequence's last token, so every prefill computes at least one token (the one whose logits
give the first sampled token). Freed blocks keep their hash until they are handed out again,
so a later group with the same prompt can still hit them.
"""
from __future__ import annotations

from .sequence import Sequence


class _Block:
    __slots__ = ("hash", "ref_count", "tokens")

    def __init__(self) -> None:
        self.ref_count = 0
        self.hash: int | None = None
        self.tokens: tuple[int, ...] | None = None


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [_Block() for _ in range(num_blocks)]
        self.hash_to_block: dict[int, int] = {}
        # dict as an ordered set: the oldest freed block is handed out first (LRU-ish)
        self.free: dict[int, None] = dict.fromkeys(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def _block_tokens(self, seq: Sequence, i: int) -> tuple[int, ...]:
        return tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])

    def _lookup(self, h: int, tokens: tuple[int, ...]) -> int | None:
        block_id = self.hash_to_block.get(h)
        if block_id is not None and self.blocks[block_id].tokens == tokens:
            return block_id
        return None

    def num_cached_prefix_tokens(self, seq: Sequence) -> int:
        """How many leading tokens of `seq` `allocate` would find in the cache (no side effects)."""
        if not self.enable_prefix_caching:
            return 0
        h, n = None, 0
        for i in range((len(seq) - 1) // self.block_size):
            tokens = self._block_tokens(seq, i)
            h = hash((h, tokens))
            if self._lookup(h, tokens) is None:
                break
            n += self.block_size
        return n

    def can_allocate(self, seq: Sequence) -> bool:
        # conservative: ignores cache hits, so admission never over-commits
        return len(self.free) >= seq.num_blocks(self.block_size)

    def _take_free_block(self) -> int:
        block_id = next(iter(self.free))
        del self.free[block_id]
        block = self.blocks[block_id]
        if block.hash is not None and self.hash_to_block.get(block.hash) == block_id:
            del self.hash_to_block[block.hash]
        block.hash, block.tokens, block.ref_count = None, None, 1
        return block_id

    def allocate(self, seq: Sequence) -> None:
        assert not seq.block_table
        bs = self.block_size
        shareable = (len(seq) - 1) // bs
        h, missed = None, not self.enable_prefix_caching
        seq.num_cached_tokens = 0
        for i in range(seq.num_blocks(bs)):
            tokens = self._block_tokens(seq, i)
            full = len(tokens) == bs
            h = hash((h, tokens)) if full and self.enable_prefix_caching else None
            block_id = None
            if not missed and i < shareable:
                block_id = self._lookup(h, tokens)
            if block_id is not None:
                block = self.blocks[block_id]
                if block.ref_count == 0:
                    del self.free[block_id]
                block.ref_count += 1
                seq.num_cached_tokens += bs
            else:
                missed = True
                block_id = self._take_free_block()
                if h is not None:
                    # registered before it is computed: a sequence in the same prefill batch
                    # may hit it, which is safe because every layer writes the KV of the whole
                    # batch before any attention reads the cache
                    block = self.blocks[block_id]
                    block.hash, block.tokens = h, tokens
                    self.hash_to_block[h] = block_id
            seq.block_table.append(block_id)

    def deallocate(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
        seq.block_table = []
        seq.num_cached_tokens = 0

    def needs_block(self, seq: Sequence) -> bool:
        """Whether the next decode step writes past the sequence's last block."""
        return len(seq.token_ids) > len(seq.block_table) * self.block_size

    def can_append(self, seq: Sequence) -> bool:
        return not self.needs_block(seq) or len(self.free) >= 1

    def may_append(self, seq: Sequence) -> None:
        if self.needs_block(seq):
            seq.block_table.append(self._take_free_block())
