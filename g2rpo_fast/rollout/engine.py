"""`RolloutEngine`: batched generation from the live policy for GRPO roll-outs."""
from __future__ import annotations

import contextlib
import inspect
import numbers
from dataclasses import dataclass

import torch

from .backends import AttentionBackend, select_backend
from .backends.base import supports_bf16
from .block_manager import BlockManager
from .decode_step import StaticDecode
from .model_runner import ModelRunner, supports_packed_forward
from .sampler import SamplingSpec, fetch, sample_tokens, seen_tokens
from .scheduler import RolloutStats, Scheduler
from .sequence import SamplingParams, Sequence

_DEFAULT_CPU_KV_BYTES = 4 << 30
_CUDA_KV_FRACTION = 0.4  # of the free GPU memory, when no budget is given


@dataclass
class RolloutOutput:
    """One request's completion.

    token_ids: generated ids, including the stop token when one was hit.
    logprobs: log-prob of each generated token under log_softmax(logits / T) (untruncated by
        top-k/top-p; log_softmax(logits) when greedy), or None unless asked for.
    finish_reason: "stop" (a stop id), or "length" (max_new_tokens or the model's context).
    """

    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str
    entropy: float | None = None  # mean entropy of the sampling distribution over the tokens (return_entropy)


def _compute_dtype(dtype, weights: torch.dtype) -> torch.dtype:
    """The engine computes in the weights' dtype, or in fp16/bf16 over fp32 weights (autocast)."""
    if dtype is None or dtype == weights:
        return weights
    if weights == torch.float32 and dtype in (torch.bfloat16, torch.float16):
        return dtype
    raise ValueError(f"`dtype` must be the model's dtype ({weights}) or, for fp32 weights, bfloat16 or "
                     f"float16; got {dtype}")


def blocks_needed(seqs: list[Sequence], block_size: int, shared: bool = True) -> int:
    """KV blocks for every sequence at full length (prompt + max_new_tokens, within the
    context), a full prompt block that several sequences begin with counted once (the block
    manager shares it: the G samples of a group, a guided sample's prompt), plus the shared
    blocks of one sequence (admission asks for a sequence's blocks as if none were shared)."""
    total, seen, most_shared = 0, set(), 0
    for s in seqs:
        total += (min(len(s) + s.params.max_new_tokens, s.max_len) + block_size - 1) // block_size
        if not shared:
            continue
        h, hits = None, 0
        for start in range(0, (len(s.token_ids) - 1) // block_size * block_size, block_size):  # as BlockManager
            h = hash((h, tuple(s.token_ids[start:start + block_size])))
            if h in seen:
                hits += 1
            else:
                seen.add(h)
        total -= hits
        most_shared = max(most_shared, hits)
    return total + most_shared


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


class RolloutEngine:
    """See the package docstring (`g2rpo_fast.rollout`) for the full contract."""

    def __init__(self, model, *, block_size: int | None = None, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 16384, num_kv_blocks: int | None = None,
                 kv_cache_bytes: int | None = None, attn_backend="auto", dtype: torch.dtype | None = None,
                 enable_prefix_caching: bool = True, cuda_graphs="auto", lm_head_fp32: bool = False):
        self.model = model
        param = next(model.parameters())
        device = param.device
        self.dtype = _compute_dtype(dtype, param.dtype)
        if self.dtype == torch.bfloat16 and not supports_bf16(device):
            raise ValueError(f"`dtype`: {device} has no native bfloat16 (it needs compute capability sm80+): "
                             f"use float16 or float32 there")
        if isinstance(attn_backend, AttentionBackend):
            backend = attn_backend
            reason = type(backend).unavailable(device, self.dtype)
            if reason is not None:
                raise ValueError(f"`attn_backend`={backend.name!r} cannot run here: {reason}")
        else:
            backend = select_backend(attn_backend, device, self.dtype)()
        self.attn_backend = backend.name
        if block_size is None:
            block_size = backend.default_block_size
        if not _is_int(block_size) or block_size <= 0:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        for name, value in (("max_num_seqs", max_num_seqs), ("max_num_batched_tokens", max_num_batched_tokens)):
            if not _is_int(value) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_kv_blocks is not None and (not _is_int(num_kv_blocks) or num_kv_blocks <= 0):
            raise ValueError(f"num_kv_blocks must be a positive int, got {num_kv_blocks!r}")
        if kv_cache_bytes is not None and (not _is_int(kv_cache_bytes) or kv_cache_bytes <= 0):
            raise ValueError(f"kv_cache_bytes must be a positive int, got {kv_cache_bytes!r}")
        if cuda_graphs not in ("auto", True, False, "static"):
            raise ValueError(f"cuda_graphs must be 'auto', True, False or 'static', got {cuda_graphs!r}")
        if cuda_graphs == "static" and not backend.static_decode:
            raise ValueError(f"cuda_graphs='static' needs a backend whose decode reads only the step's tensors "
                             f"(flash_attn, torch_varlen, sdpa), not {backend.name!r}")
        if cuda_graphs is True and (device.type != "cuda" or not backend.static_decode):
            raise ValueError(f"cuda_graphs=True needs a CUDA device and a backend whose decode reads only the "
                             f"step's tensors (flash_attn, torch_varlen, sdpa); here: {device.type}, {backend.name}")
        self.cuda_graphs = cuda_graphs
        self._scratch_blocks = 0
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.num_kv_blocks = num_kv_blocks
        self.kv_cache_bytes = kv_cache_bytes
        self.enable_prefix_caching = enable_prefix_caching
        self.packed = supports_packed_forward(model)
        self.runner = ModelRunner(model, block_size, backend, self.dtype, lm_head_fp32) if self.packed else None
        self.backend = backend
        self.max_model_len = model.config.max_position_embeddings
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self.stats = RolloutStats()

    # ---- weights / memory ---------------------------------------------------------------
    def update_weights(self) -> None:
        """No-op: the engine reads the model's live parameters and caches nothing derived."""

    def free_kv_cache(self) -> None:
        """Release the KV cache (e.g. before the training step); the next call re-allocates."""
        if self.runner is not None:
            self.runner.free_kv_cache()

    @property
    def kv_cache_bytes_allocated(self) -> int:
        return 0 if self.runner is None else self.runner.cache_bytes()

    @contextlib.contextmanager
    def _compute_context(self):
        """No autograd; and autocast to the compute dtype when the weights are stored in fp32.

        One autocast region per `generate`: autocast caches each weight's 16-bit cast for the
        region, so every weight is cast once per call and the copies are freed when it returns.
        That cache is off under `inference_mode`, so autocast runs under `no_grad` instead
        (else every step would cast every weight again).
        """
        param = next(self.model.parameters())
        if self.dtype == param.dtype:
            with torch.inference_mode():
                yield
            return
        with torch.no_grad(), torch.autocast(param.device.type, dtype=self.dtype):
            yield

    def _kv_blocks_for(self, seqs: list[Sequence]) -> int:
        if self.num_kv_blocks is not None:
            return self.num_kv_blocks
        needed = blocks_needed(seqs, self.block_size, self.enable_prefix_caching)
        budget = self.kv_cache_bytes
        if budget is None:
            if self.runner.device.type == "cuda":
                dev = self.runner.device
                # free memory, plus what torch's caching allocator holds unused (e.g. the last
                # training step's activations), plus this engine's current cache (reusable)
                idle = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
                budget = int((torch.cuda.mem_get_info(dev)[0] + idle) * _CUDA_KV_FRACTION)
                budget += self.runner.cache_bytes()
            else:
                budget = _DEFAULT_CPU_KV_BYTES
        return max(1, min(needed, budget // self.runner.bytes_per_block()))

    # ---- validation ---------------------------------------------------------------------
    def _check(self, prompts, max_new_tokens, temperature, top_p, top_k, seed, stop_token_ids, min_p=0.0,
               repetition_penalty=1.0):
        if not isinstance(prompts, (list, tuple)):
            raise ValueError(f"prompts must be a list of token-id lists, got {type(prompts).__name__}")
        for i, p in enumerate(prompts):
            if isinstance(p, torch.Tensor):
                p = p.tolist()
            if not isinstance(p, (list, tuple)) or not all(_is_int(t) for t in p):
                raise ValueError(f"prompts[{i}] must be a list of int token ids")
            if len(p) == 0:
                raise ValueError(f"prompts[{i}] is empty")
            bad = [t for t in p if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"prompts[{i}] has token id {bad[0]} outside the vocabulary [0, {self.vocab_size})")
            if len(p) > self.max_model_len:
                raise ValueError(f"prompts[{i}] has {len(p)} tokens, longer than the model's context "
                                 f"(max_position_embeddings={self.max_model_len})")
        if not _is_int(max_new_tokens) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if not isinstance(temperature, numbers.Real) or not temperature >= 0 or temperature == float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        if not _is_int(top_k) or top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {top_k!r}")
        if not isinstance(min_p, numbers.Real) or not 0 <= min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1] (0 = off), got {min_p!r}")
        if not isinstance(repetition_penalty, numbers.Real) or not 0 < repetition_penalty < float("inf"):
            raise ValueError(f"repetition_penalty must be a finite number > 0 (1 = off), got {repetition_penalty!r}")
        if seed is not None and not _is_int(seed):
            if not isinstance(seed, (list, tuple)) or len(seed) != len(prompts) or not all(map(_is_int, seed)):
                raise ValueError("seed must be None, an int, or a list of ints with one seed per prompt")
        if stop_token_ids is not None:
            if not isinstance(stop_token_ids, (list, tuple, set, frozenset)) or not all(map(_is_int, stop_token_ids)):
                raise ValueError(f"stop_token_ids must be a list of ints, got {stop_token_ids!r}")

    # ---- generation ---------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed=None, stop_token_ids=None,
                 return_logprobs: bool = False, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 return_entropy: bool = False) -> list[RolloutOutput]:
        """Complete every prompt; returns one `RolloutOutput` per prompt, in order."""
        self._check(prompts, max_new_tokens, temperature, top_p, top_k, seed, stop_token_ids, min_p,
                    repetition_penalty)
        prompts = [p.tolist() if isinstance(p, torch.Tensor) else list(p) for p in prompts]
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=float(temperature),
                                top_p=float(top_p), top_k=int(top_k),
                                stop_token_ids=frozenset(stop_token_ids or ()))
        if seed is None:
            seeds = torch.randint(0, 2**62, (len(prompts),)).tolist()  # follows torch.manual_seed
        elif _is_int(seed):
            seeds = [seed + i for i in range(len(prompts))]
        else:
            seeds = list(seed)
        seqs = [Sequence(i, list(p), len(p), params, s % 2**63, self.max_model_len)
                for i, (p, s) in enumerate(zip(prompts, seeds))]
        spec = SamplingSpec(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                            return_logprobs=return_logprobs, min_p=float(min_p),
                            repetition_penalty=float(repetition_penalty), return_entropy=bool(return_entropy))
        self.stats = RolloutStats(prompt_tokens=sum(map(len, prompts)))
        todo = [s for s in seqs if max_new_tokens > 0 and len(s) < s.max_len]
        if todo:
            with self._compute_context():
                if self.packed:
                    self._generate_packed(todo, spec)
                else:
                    self._generate_generic(todo, spec)
        outputs = []
        for s in seqs:
            ids = s.completion_ids
            reason = "stop" if ids and ids[-1] in params.stop_token_ids else "length"
            entropy = s.entropy_sum / len(ids) if return_entropy and ids else None
            outputs.append(RolloutOutput(ids, list(s.logprobs) if return_logprobs else None, reason, entropy))
        return outputs

    def _generate_packed(self, seqs: list[Sequence], spec: SamplingSpec) -> None:
        """Continuous batching over the paged cache. Each step samples on the device; its tokens
        (and log-probs) come to the host in one transfer, the step's only host sync (the
        scheduler needs them for the stop checks). Decode steps run over static buffers
        (`decode_step.py`), replayed from CUDA graphs with `cuda_graphs`."""
        num_blocks = self._kv_blocks_for(seqs)
        if self.num_kv_blocks is None:
            num_blocks = max(num_blocks, self.runner.num_kv_blocks - self._scratch_blocks)  # grow only: reuse
        # a repetition penalty reads each row's tokens: the per-step path (no static buffers for them)
        static = self._static_decode_mode() if spec.repetition_penalty == 1.0 else None
        self._scratch_blocks = 1 if static else 0  # the padding rows of static decode write there
        self.runner.allocate_kv_cache(num_blocks + self._scratch_blocks)
        usable = self.runner.num_kv_blocks - self._scratch_blocks
        block_manager = BlockManager(usable, self.block_size, self.enable_prefix_caching)
        scheduler = Scheduler(block_manager, self.max_num_seqs, self.max_num_batched_tokens, self.stats)
        for s in seqs:
            scheduler.add(s)
        decode = None
        if static:
            width = -(-max(min(len(s) + s.params.max_new_tokens, s.max_len) for s in seqs) // self.block_size)
            decode = StaticDecode(self.runner, spec, min(self.max_num_seqs, len(seqs)), width, usable,
                                  capture=static == "graphs")
        self.runner.reset_decode_state()
        try:
            while not scheduler.is_finished():
                batch, is_prefill = scheduler.schedule()
                if not batch:
                    continue
                if decode is not None and not is_prefill:
                    tokens, values = decode.run(batch)
                else:
                    logits, meta = self.runner.run(batch, is_prefill)
                    seen = seen_tokens(batch, logits.device) if spec.repetition_penalty != 1.0 else None
                    tokens, values = sample_tokens(logits, meta.seeds, meta.counters, spec, seen)
                scheduler.postprocess(batch, *fetch(tokens, values, spec))
        finally:
            self.runner.reset_decode_state()  # its memory is per call

    def _static_decode_mode(self) -> str | None:
        """"graphs" (CUDA graphs), "static" (the same static step, eager) or None (per-step
        tensors), from `cuda_graphs` and the backend."""
        if self.cuda_graphs == "static":
            return "static"
        on_cuda = self.runner.device.type == "cuda" and self.backend.static_decode
        if self.cuda_graphs is True or (self.cuda_graphs == "auto" and on_cuda):
            return "graphs"
        return None

    def _generate_generic(self, seqs: list[Sequence], spec: SamplingSpec) -> None:
        """Any other causal LM (other families, sliding-window layers): HF's own forward with a
        `DynamicCache`, over left-padded batches as HF `generate` builds them (attention mask,
        position ids from it). Prompts are batched by length, at most `max_num_seqs` per batch and
        about `max_num_batched_tokens` padded prompt tokens; each request samples from its own
        generator, so its completion does not depend on the batch it lands in."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            batch, width = [], 0
            for s in sorted(seqs, key=len, reverse=True):
                if batch and (len(batch) == self.max_num_seqs
                              or (len(batch) + 1) * width > self.max_num_batched_tokens):
                    self._generic_batch(batch, spec)
                    batch = []
                if not batch:
                    width = len(s)
                batch.append(s)
            self._generic_batch(batch, spec)
        finally:
            model.train(was_training)

    def _generic_batch(self, batch: list[Sequence], spec: SamplingSpec) -> None:
        from transformers import DynamicCache

        model = self.model
        cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        device = next(model.parameters()).device
        try:
            cache = DynamicCache(config=model.config)
        except TypeError:
            cache = DynamicCache()
        width = max(len(s) for s in batch)
        pad = 0  # any id: padded positions are masked out
        ids = torch.tensor([[pad] * (width - len(s)) + s.token_ids for s in batch], device=device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in batch], device=device)
        self.stats.prefill_tokens += sum(len(s) for s in batch)
        while True:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]  # HF generate's rule
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                        **{cache_kw: cache})
            live = [i for i, s in enumerate(batch) if not s.is_done()]
            rows = [batch[i] for i in live]
            seeds = torch.tensor([s.seed for s in rows], device=device)
            counters = torch.tensor([s.num_completion_tokens for s in rows], device=device)
            seen = seen_tokens(rows, device) if spec.repetition_penalty != 1.0 else None
            tokens, logprobs, entropies = fetch(*sample_tokens(out.logits[live, -1].float(), seeds, counters, spec,
                                                               seen), spec)
            for j, i in enumerate(live):
                batch[i].append(tokens[j], None if logprobs is None else logprobs[j],
                                None if entropies is None else entropies[j])
            self.stats.generated_tokens += len(live)
            if all(s.is_done() for s in batch):
                return
            # finished rows keep decoding a pad token (their outputs are ignored): the cache
            # stays one rectangular batch
            ids = torch.tensor([[pad if s.is_done() else s.token_ids[-1]] for s in batch], device=device)
            mask = torch.cat([mask, mask.new_ones(len(batch), 1)], dim=1)
