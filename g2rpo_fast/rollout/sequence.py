"""One generation request and its sampling settings."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings (already validated by the engine)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop_token_ids: frozenset = frozenset()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class SequenceStatus(enum.Enum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2


@dataclass(eq=False)
class Sequence:
    """A prompt plus the tokens generated so far, with its KV block table.

    After a preemption the sequence is prefilled again over all its tokens (prompt and
    completion so far); `num_prompt_tokens` keeps the original split for the output.
    """

    seq_id: int
    token_ids: list[int]
    num_prompt_tokens: int
    params: SamplingParams
    seed: int  # the sampler's Philox key (rollout/sampler.py); the token index is its counter
    max_len: int  # hard cap on len(token_ids): the model's context
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0  # tokens whose KV already sits in the blocks
    logprobs: list[float] = field(default_factory=list)
    entropy_sum: float = 0.0  # Σ over generated tokens of the tempered distribution's entropy (return_entropy)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def completion_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    def num_blocks(self, block_size: int) -> int:
        return (len(self.token_ids) + block_size - 1) // block_size

    def append(self, token_id: int, logprob: float | None, entropy: float | None = None) -> None:
        self.token_ids.append(token_id)
        if logprob is not None:
            self.logprobs.append(logprob)
        if entropy is not None:
            self.entropy_sum += entropy

    def is_done(self) -> bool:
        length = len(self.token_ids)
        n = length - self.num_prompt_tokens
        if n >= self.params.max_new_tokens or length >= self.max_len:
            return True
        return n > 0 and self.token_ids[-1] in self.params.stop_token_ids
