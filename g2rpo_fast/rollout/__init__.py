"""Packed-sequence roll-out engine (prefix-shared paged KV cache, continuous batching).

    from g2rpo_fast.rollout import RolloutEngine
    engine = RolloutEngine(policy_model)              # options below
    outs = engine.generate(prompts, max_new_tokens=256, temperature=1.0, top_p=1.0, top_k=0,
                           seed=0, stop_token_ids=[eos_id], return_logprobs=True)
    outs[i].token_ids, outs[i].logprobs, outs[i].finish_reason

`prompts` is a list of token-id lists (prompt, or prompt + guidance prefix). Each
`RolloutOutput.token_ids` holds the generated ids only, including the stop token when one was
hit; generation also ends at `max_new_tokens` or at the model's context
(`max_position_embeddings`). `max_new_tokens=0` gives empty completions.

Log-probs (`return_logprobs=True`) are those of the *untruncated* tempered distribution,
log_softmax(logits / temperature) — what the trainer's `old_logps` recompute gives — even when
top-k / top-p restricted the sampling; with temperature 0 (greedy) they are log_softmax(logits).

Seeds: `seed=int` gives request i the seed `seed + i`; a list gives one seed per request; the
sampler draws request i's n-th token from Philox4x32-10 keyed by its seed at counter n, on the
device (`sampler.py`), so a completion does not depend on the other requests of the batch, nor
on a preemption. `seed=None` draws the seeds from torch's global RNG.

Models: Llama / Qwen2 / Qwen3 causal LMs (no sliding-window layers) run a packed forward built
from the model's own submodules, so it reads the live parameters: no weight sync is needed
after an optimizer step (`update_weights()` is a no-op) and no second copy of the weights
exists. Any other causal LM runs a slower generic path (HF forward with a cache, one request
at a time).

Engine options: `block_size` (the backend's default: 16; 256 with flash_attn), `max_num_seqs`
(256), `max_num_batched_tokens` (16384 prompt tokens per prefill step), `num_kv_blocks` or
`kv_cache_bytes` (KV budget; default: enough for the call, each shared prompt block counted
once, capped at 4 GiB on CPU or 40 % of the free GPU memory, counting what torch's allocator
holds unused; the trainer passes its memory plan's), `attn_backend` ("auto" |
"flash_attn" | "torch_varlen" | "sdpa" | "cpu", or an `AttentionBackend` instance; see
`rollout/backends/`: "auto" decides from the device and the compute dtype), `dtype` (the
compute dtype: the model's, or bfloat16/float16 over fp32 weights, run under autocast with
each weight cast once per call), `enable_prefix_caching` (True), `cuda_graphs` ("auto": decode
steps replayed from CUDA graphs on CUDA with a backend whose decode reads only the step's
tensors; True; False; "static": the same static-buffer step without capture, for checking on
the CPU; `decode_step.py`). Full prompt blocks with
identical content (the G samples of a group, the shared prompt of guided samples) are
prefilled once and shared by reference count; `engine.stats` (a `RolloutStats`) counts
prompt, prefilled and cached tokens of the last call. When KV blocks run out during decode,
the newest sequence is preempted and recomputed later. Decode never copies each sequence's
context per step: flash-attn and the paged Triton kernel read the cache blocks in place; the
CPU backend reads a dense copy of the running batch's K/V that grows by one token per step
(rebuilt only when the batch changes), keeping each group's shared prompt prefix once.
`engine.free_kv_cache()` releases the cache between roll-outs (the trainer does so before
every training step).

Guided group roll-outs over the engine (DESIGN.md section 1), shared by the trainer and the
evaluator: `composition.py` (which samples of a group are guided, and with which tokens:
`Sample`) and `guided.py` (`Rollouts`: rows of a data set in, completed samples out).
"""
from .engine import RolloutEngine, RolloutOutput
from .scheduler import RolloutStats

__all__ = ["RolloutEngine", "RolloutOutput", "RolloutStats"]
