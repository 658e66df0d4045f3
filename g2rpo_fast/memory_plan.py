"""The memory planner: the bytes each phase of a training step holds, from a model's config alone.

`plan(shape, settings)` predicts, per rank, the peak of the three phases of a step and chooses
the settings that fit a memory size:

- **rollout**: fp32 weights and AdamW state (the gradients are freed after each step), the
  compute-dtype copy of the weights (autocast's cast cache; FSDP: the gathered bf16 model),
  the KV cache of the generation batch, the prefill and sampling work space;
- **train**: the same state plus the fp32 gradients, the saved activations of one micro-batch
  piece (`max_tokens_per_microbatch` tokens of the packed row), with or without gradient
  checkpointing, the backward's transient buffers and the fused-linear loss's work space;
- **logps**: the no-grad forward of old / reference log-probs over one piece.

Chosen: `max_tokens_per_microbatch` (the largest piece whose train phase fits),
`kv_cache_bytes` / `kv_blocks` (what is left in the roll-out phase, capped at what the
generation batch needs at full length), `max_num_seqs` (the whole generation batch).

Saved activations are counted tensor by tensor for the decoder layer of Llama / Qwen2 / Qwen3
(HF's modules, as the packed forward runs them; `tests/test_memory_plan.py` counts the saved
tensors of real layers and compares): fp32 compute, or 16-bit autocast over fp32 master
weights (each linear saves its own cast copy of its input). Attention saves q, k, v, the
output and the log-sum-exp; the SDPA fallback repeats k and v to the query heads (GQA).
Nothing here allocates: a model directory holding only `config.json` is enough (the parameter
count comes from the model built on the meta device).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

GIB = 1 << 30
F32 = 4
# Kept free of the planned peak: the CUDA context and kernels' work space (~1 GiB), and the
# caching allocator's fragmentation (a share of the device).
RESERVED_BYTES = GIB
RESERVED_FRACTION = 0.08
KV_BLOCK_TOKENS = 16
FUSED_LINEAR_CHUNK_BYTES = GIB  # = kernels/triton/fused_linear.py CHUNK_BYTES_CUDA


@dataclass(frozen=True)
class ModelShape:
    num_params: int
    embedding_params: int  # vocab x hidden of the input embedding
    lm_head_params: int  # its own weight (0 when tied to the embedding)
    num_layers: int
    hidden: int
    intermediate: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab: int
    model_type: str = ""

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        return (self.num_params - self.embedding_params - self.lm_head_params) // max(self.num_layers, 1)

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """From a transformers config: the parameter count of the model built on the meta
        device (no memory, no weights), the dimensions from the config."""
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        num_params = sum(p.numel() for p in model.parameters())  # tied weights count once
        embed = model.get_input_embeddings().weight
        head = model.get_output_embeddings()
        head_params = 0 if head is None or head.weight is embed else head.weight.numel()
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = text.num_attention_heads
        return cls(num_params=num_params, embedding_params=embed.numel(), lm_head_params=head_params,
                   num_layers=text.num_hidden_layers, hidden=text.hidden_size,
                   intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size), num_heads=heads,
                   num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
                   head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
                   vocab=embed.shape[0], model_type=getattr(text, "model_type", ""))


@dataclass(frozen=True)
class PlanSettings:
    """What a run does, per rank (the trainer's config, resolved for a device)."""

    memory_bytes: int
    device: str = "cuda"  # "cuda" | "cpu"
    compute_bytes: int = 2  # 2: bf16/fp16 autocast over fp32 weights; 4: fp32
    attention: str = "flash"  # "flash" (flash_attn / torch varlen) | "sdpa" (SDPA per sequence, GQA repeated)
    world_size: int = 1
    fsdp: bool = False
    fsdp_cpu_offload: bool = False
    beta: float = 0.0
    num_generations: int = 8
    completions_per_micro_batch: int = 64  # per_device_train_batch_size
    micro_batches: int = 1  # gradient_accumulation_steps: one generation batch holds them all
    prompt_tokens: int = 256  # the longest prompt (max_prompt_length)
    completion_tokens: int = 256  # the longest completion: generated + guidance
    prefix_shared: bool = True
    gradient_checkpointing: bool = True
    max_tokens_per_microbatch: int | None = None  # None: choose; 0: the whole micro-batch in one piece
    max_num_seqs: int | None = None  # None: the whole generation batch
    max_num_batched_tokens: int = 16384
    row_split_tokens: int = 0  # packed_row_tokens: forwards of at most this many tokens (0: one row)

    @property
    def completions_per_generation(self) -> int:
        return self.completions_per_micro_batch * self.micro_batches

    @property
    def autocast(self) -> bool:
        return self.compute_bytes < F32


# ----------------------------------------------------------------------------- tokens

def group_tokens(s: PlanSettings) -> int:
    """Tokens of one group in the packed training row (its prompt once with prefix sharing)."""
    if s.prefix_shared:
        return s.prompt_tokens + s.num_generations * s.completion_tokens
    return s.num_generations * (s.prompt_tokens + s.completion_tokens)


def micro_batch_tokens(s: PlanSettings) -> int:
    return group_tokens(s) * max(1, s.completions_per_micro_batch // s.num_generations)


def generation_kv_tokens(s: PlanSettings) -> int:
    """KV tokens (whole blocks) of the generation batch at full length, each prompt's full blocks
    held once for its group, as the engine counts them (`rollout.engine.blocks_needed`)."""
    b = KV_BLOCK_TOKENS
    prompts = max(1, s.completions_per_generation // s.num_generations)
    per_seq = -(-(s.prompt_tokens + s.completion_tokens) // b)
    shared = (s.prompt_tokens - 1) // b if s.prompt_tokens else 0
    blocks = s.completions_per_generation * per_seq - prompts * (s.num_generations - 1) * shared + shared
    return blocks * b


# ----------------------------------------------------------------------------- per-token bytes

def layer_activation_bytes(m: ModelShape, s: PlanSettings) -> int:
    """Bytes one decoder layer saves for backward, per token of the packed row."""
    c = s.compute_bytes
    h, i, q, kv = m.hidden, m.intermediate, m.q_dim, m.kv_dim
    norms = 2 * (F32 * h + F32 * h) + 2 * F32  # each RMSNorm: its fp32 input and normalised input, rsqrt
    # linear inputs: fp32 compute shares one norm output among q/k/v (and gate/up); autocast
    # casts it once per linear (q, k, v, gate, up: 5 copies)
    proj_inputs = 5 * c * h if s.autocast else 2 * F32 * h
    qk_norms = F32 * (q + kv) + c * (q + kv) + F32 * (m.num_heads + m.num_kv_heads)
    if s.attention == "sdpa":  # the query copy, k and v repeated to the query heads, the output
        attention = 4 * c * q
    else:  # flash kernels: q, k, v, the output
        attention = c * (2 * q + 2 * kv)
    attention += F32 * m.num_heads  # log-sum-exp
    o_proj_input = c * q
    mlp = 4 * c * i  # gate, up, silu(gate), silu(gate)·up
    return norms + proj_inputs + qk_norms + attention + o_proj_input + mlp


def checkpointed_layer_bytes(m: ModelShape, s: PlanSettings) -> int:
    """Per token per layer under gradient checkpointing: the layer's fp32 input only."""
    return F32 * m.hidden


def outside_layers_bytes(m: ModelShape, s: PlanSettings) -> int:
    """Per row token, outside the layers: final norm, RoPE tables, positions and ids."""
    return 2 * F32 * m.hidden + 2 * F32 * m.head_dim + 16


def activations_per_token(m: ModelShape, s: PlanSettings, checkpointing: bool) -> int:
    per_layer = checkpointed_layer_bytes(m, s) if checkpointing else layer_activation_bytes(m, s)
    return m.num_layers * per_layer + outside_layers_bytes(m, s)


def kv_bytes_per_token(m: ModelShape, s: PlanSettings) -> int:
    return 2 * m.num_layers * m.kv_dim * s.compute_bytes


# ----------------------------------------------------------------------------- phases

def state_bytes(m: ModelShape, s: PlanSettings) -> dict:
    """fp32 weights, gradients and AdamW's two moments (FSDP: this rank's shards; offloaded
    to the CPU: none on the device), and the reference model (beta > 0)."""
    shards = s.world_size if s.fsdp else 1
    on_device = 0 if s.fsdp_cpu_offload else 1
    weights = F32 * m.num_params // shards * on_device
    return {"weights": weights, "gradients": weights, "optimizer": 2 * weights,
            "reference": weights if s.beta > 0 else 0}


def compute_copy_bytes(m: ModelShape, s: PlanSettings, whole: bool) -> int:
    """The compute-dtype copy of the weights a forward reads: autocast's cached casts (every
    weight but the embedding; the loss casts the lm_head itself), or FSDP's gathered units
    (`whole`: the roll-out's full model; training: two layers in flight and the root)."""
    if s.fsdp and s.world_size > 1:
        if whole:
            return s.compute_bytes * m.num_params
        return s.compute_bytes * (2 * m.layer_params + m.embedding_params + m.lm_head_params)
    if not s.autocast:
        return 0
    return s.compute_bytes * (m.num_params - m.embedding_params - (m.lm_head_params if not whole else 0))


def loss_workspace_bytes(m: ModelShape, s: PlanSettings, completion_tokens: int) -> int:
    """The fused-linear loss of `completion_tokens` tokens: the gathered hidden states and their
    compute-dtype copy, the lm_head weight in the compute dtype, fp32 gradient accumulators
    (d_hidden [N, H], d_weight [V, H]) and their casts; on CUDA one logits chunk of the chunked
    backward."""
    n, h, v, c = completion_tokens, m.hidden, m.vocab, s.compute_bytes
    hidden = F32 * n * h + (c * n * h if s.autocast else 0)
    weight = c * v * h if s.autocast else 0
    grads = F32 * n * h + F32 * v * h + ((c * n * h + c * v * h) if s.autocast else 0)
    # CUDA's chunked backward: one chunk's fp32 logits and their 16-bit copy (kernels/triton/fused_linear.py)
    chunk = min(6 * n * v, FUSED_LINEAR_CHUNK_BYTES) if s.device == "cuda" else 0
    return hidden + weight + grads + chunk


def backward_transient_bytes(m: ModelShape, s: PlanSettings, row_tokens: int, checkpointing: bool) -> int:
    """Live during the backward beyond the saved tensors, for one forward's tokens (the row, or
    a piece of it with `row_split_tokens`): the gradient flowing through one layer (its widest
    activations, twice), the compute-dtype gradients of one layer's weights, and, with
    checkpointing, the recomputed activations of that layer still live."""
    tokens = min(row_tokens, s.row_split_tokens) if s.row_split_tokens else row_tokens
    flowing = 2 * tokens * (F32 * m.hidden + s.compute_bytes * max(m.intermediate, m.q_dim))
    weight_grads = s.compute_bytes * m.layer_params if s.autocast else 0
    # non-reentrant checkpointing frees each recomputed tensor once its gradient is taken: about
    # half of the layer's activations are live at once (measured on the CPU, tests/test_memory_plan.py)
    recomputed = tokens * layer_activation_bytes(m, s) // 2 if checkpointing else 0
    return flowing + weight_grads + recomputed


def forward_transient_bytes(m: ModelShape, s: PlanSettings, tokens: int) -> int:
    """A no-grad forward over `tokens`: one layer's widest intermediates (gate, up, their
    product) and the residual stream."""
    return tokens * (3 * s.compute_bytes * m.intermediate + 3 * F32 * m.hidden + 2 * s.compute_bytes * m.q_dim)


def sampling_bytes(m: ModelShape, s: PlanSettings, seqs: int) -> int:
    """Per decode step: fp32 logits, probabilities, their float64 cumulative sum, the sort."""
    return seqs * m.vocab * (F32 + F32 + 8 + 8 + F32)


def decode_buffer_bytes(m: ModelShape, s: PlanSettings, kv_bytes: int) -> int:
    """The CPU backend decodes from a dense copy of the running batch's K/V (<= 2 GiB)."""
    return min(kv_bytes, 2 * GIB) if s.device == "cpu" else 0


def usable_bytes(s: PlanSettings) -> int:
    return int(s.memory_bytes * (1 - RESERVED_FRACTION)) - RESERVED_BYTES


def _total(parts: dict) -> dict:
    return {**parts, "total": sum(parts.values())}


def train_phase(m: ModelShape, s: PlanSettings, row_tokens: int, checkpointing: bool) -> dict:
    state = state_bytes(m, s)
    completions = _completion_share(s, row_tokens)
    return _total({**state, "compute_weights": compute_copy_bytes(m, s, whole=False),
                   "activations": row_tokens * activations_per_token(m, s, checkpointing),
                   "backward_transient": backward_transient_bytes(m, s, row_tokens, checkpointing),
                   "loss_workspace": loss_workspace_bytes(m, s, completions)})


def logps_phase(m: ModelShape, s: PlanSettings, row_tokens: int) -> dict:
    state = dict(state_bytes(m, s), gradients=0)  # right after the roll-out: no gradients yet
    completions = _completion_share(s, row_tokens)
    return _total({**state, "compute_weights": compute_copy_bytes(m, s, whole=False),
                   "forward_transient": forward_transient_bytes(m, s, row_tokens),
                   "loss_workspace": F32 * completions * m.hidden * 2 + (s.compute_bytes * m.vocab * m.hidden
                                                                          if s.autocast else 0)})


def rollout_phase(m: ModelShape, s: PlanSettings, kv_bytes: int, seqs: int) -> dict:
    state = dict(state_bytes(m, s), gradients=0)  # freed by the optimizer step (set_to_none)
    prefill = min(s.max_num_batched_tokens, s.completions_per_generation * s.prompt_tokens)
    return _total({**state, "compute_weights": compute_copy_bytes(m, s, whole=True), "kv_cache": kv_bytes,
                   "decode_buffer": decode_buffer_bytes(m, s, kv_bytes),
                   "prefill_transient": forward_transient_bytes(m, s, prefill),
                   "sampling": sampling_bytes(m, s, seqs)})


def _completion_share(s: PlanSettings, row_tokens: int) -> int:
    """Completion tokens (rows of the loss) in a piece of `row_tokens` row tokens."""
    per_group = s.num_generations * s.completion_tokens
    return max(1, int(row_tokens * per_group / max(group_tokens(s), 1)))


# ----------------------------------------------------------------------------- the plan

def choose_row_tokens(m: ModelShape, s: PlanSettings, checkpointing: bool) -> int:
    """The largest piece of the packed row (whole groups, at most the micro-batch) whose train
    phase fits; one group when none does (the plan then says it does not fit)."""
    whole = micro_batch_tokens(s)
    if s.max_tokens_per_microbatch:
        return min(s.max_tokens_per_microbatch, whole)
    if s.max_tokens_per_microbatch == 0:
        return whole
    budget = usable_bytes(s)
    low, high = 0, whole
    while low < high:  # train_phase is increasing in row_tokens
        mid = (low + high + 1) // 2
        if train_phase(m, s, mid, checkpointing)["total"] <= budget:
            low = mid
        else:
            high = mid - 1
    group = group_tokens(s)
    return max(group, low // group * group) if low < whole else whole


def plan(m: ModelShape, s: PlanSettings) -> dict:
    """Per-phase bytes (`phases`), `peak_bytes`, whether it fits, and the chosen settings."""
    row_tokens = choose_row_tokens(m, s, s.gradient_checkpointing)
    seqs = s.max_num_seqs or s.completions_per_generation
    needed_kv = generation_kv_tokens(s) * kv_bytes_per_token(m, s)
    room = usable_bytes(s) - rollout_phase(m, s, 0, seqs)["total"]
    kv_bytes = max(0, min(needed_kv, room if s.device == "cuda" else min(needed_kv, 4 * GIB)))
    block_bytes = KV_BLOCK_TOKENS * kv_bytes_per_token(m, s)
    phases = {"rollout": rollout_phase(m, s, kv_bytes, seqs),
              "train": train_phase(m, s, row_tokens, s.gradient_checkpointing),
              "logps": logps_phase(m, s, row_tokens)}
    peak = max(p["total"] for p in phases.values())
    pieces = math.ceil(micro_batch_tokens(s) / max(row_tokens, 1))
    return {
        "model": {"params": m.num_params, "layers": m.num_layers, "hidden": m.hidden, "vocab": m.vocab,
                  "model_type": m.model_type},
        "memory_bytes": s.memory_bytes, "usable_bytes": usable_bytes(s),
        "phases": phases, "peak_bytes": peak,
        "fits": peak <= usable_bytes(s) and kv_bytes >= block_bytes * math.ceil(
            (s.prompt_tokens + s.completion_tokens) / KV_BLOCK_TOKENS),
        "activations_per_token": {"checkpointing": activations_per_token(m, s, True),
                                  "no_checkpointing": activations_per_token(m, s, False)},
        "activations_at_budget": {"checkpointing": row_tokens * activations_per_token(m, s, True),
                                  "no_checkpointing": row_tokens * activations_per_token(m, s, False)},
        "settings": {"gradient_checkpointing": s.gradient_checkpointing, "max_tokens_per_microbatch": row_tokens,
                     "pieces_per_micro_batch": pieces, "kv_cache_bytes": kv_bytes,
                     "kv_blocks": kv_bytes // block_bytes if block_bytes else 0,
                     "kv_tokens_needed": generation_kv_tokens(s), "max_num_seqs": seqs,
                     "micro_batch_tokens": micro_batch_tokens(s)},
    }


ENGINE_MIN_SEQS = 256  # the engine's own default max_num_seqs (evaluation runs through it too)


def engine_max_num_seqs(config) -> int:
    """A run's roll-out engine holds the whole generation batch at once (at least its default)."""
    return max(ENGINE_MIN_SEQS, config.per_device_train_batch_size * config.gradient_accumulation_steps)


def settings_from_config(config, *, memory_bytes: int, device: str, compute_bytes: int, attention: str,
                         world_size: int = 1, prefix_shared: bool = True, gradient_checkpointing: bool = True,
                         max_tokens_per_microbatch: int | None = None) -> PlanSettings:
    """A `G2RPOConfig` (or anything with its field names) as planner settings."""
    guidance = 0
    if config.guidance_schedule != "none" and config.n_guided:
        guidance = max(config.guidance_max_length, config.guidance_initial_length)
    return PlanSettings(
        memory_bytes=int(memory_bytes), device=device, compute_bytes=compute_bytes, attention=attention,
        world_size=world_size, fsdp=config.fsdp, fsdp_cpu_offload=config.fsdp_cpu_offload, beta=config.beta,
        num_generations=config.num_generations, completions_per_micro_batch=config.per_device_train_batch_size,
        micro_batches=config.gradient_accumulation_steps, prompt_tokens=config.max_prompt_length or 512,
        completion_tokens=config.max_completion_length + guidance, prefix_shared=prefix_shared,
        row_split_tokens=(config.packed_row_tokens if config.packed_row_tokens >= 0
                          else 0 if device == "cuda" else 512),
        gradient_checkpointing=gradient_checkpointing, max_tokens_per_microbatch=max_tokens_per_microbatch,
        max_num_seqs=engine_max_num_seqs(config))


def replace(settings: PlanSettings, **changes) -> PlanSettings:
    return dataclasses.replace(settings, **changes)


def plan_for_config(config, model_config, *, memory_bytes: int, device: str = "cuda", world_size: int = 1) -> dict:
    """`g2rpo-fast plan`: the plan of a `G2RPOConfig` for a model config on a device it is not run
    on, with the run's `auto` choices resolved as the trainer resolves them there (bf16 and the
    flash kernels on a CUDA GPU of sm80+, prefix sharing for Llama / Qwen2 / Qwen3, gradient
    checkpointing on CUDA)."""
    from types import SimpleNamespace

    from g2rpo_fast.packing.prefix_shared_attention import unsupported_reason

    names = {"float32": 4, "bfloat16": 2, "float16": 2}
    compute_bytes = (2 if device == "cuda" else 4) if config.torch_dtype == "auto" else names[config.torch_dtype]
    attention = "sdpa" if (config.attn_implementation == "sdpa" or compute_bytes == 4 or device != "cuda") \
        else "flash"
    shared = config.prefix_shared_forward != "false" and unsupported_reason(
        SimpleNamespace(config=model_config), varlen_installed=True) is None
    checkpointing = config.gradient_checkpointing == "true" or (
        config.gradient_checkpointing == "auto" and device == "cuda")
    budget = None if config.max_tokens_per_microbatch == "auto" else config.max_tokens_per_microbatch
    settings = settings_from_config(config, memory_bytes=memory_bytes, device=device, compute_bytes=compute_bytes,
                                    attention=attention, world_size=world_size, prefix_shared=shared,
                                    gradient_checkpointing=checkpointing, max_tokens_per_microbatch=budget)
    out = plan(ModelShape.from_config(model_config), settings)
    out["settings"].update(device=device, world_size=world_size, compute_bytes=compute_bytes, attention=attention,
                           prefix_shared=shared)
    return out


def summary_lines(result: dict) -> list[str]:
    """A reader's view of a plan: one line per phase, then the chosen settings."""
    gib = lambda b: f"{b / GIB:.2f} GiB"
    lines = [f"model: {result['model']['params'] / 1e9:.3f} B parameters, {result['model']['layers']} layers; "
             f"memory {gib(result['memory_bytes'])} ({gib(result['usable_bytes'])} planned for)"]
    for name, parts in result["phases"].items():
        detail = ", ".join(f"{k} {gib(v)}" for k, v in parts.items() if k != "total" and v)
        lines.append(f"{name}: {gib(parts['total'])} ({detail})")
    chosen = result["settings"]
    lines.append(f"peak {gib(result['peak_bytes'])}: {'fits' if result['fits'] else 'does NOT fit'}; "
                 f"max_tokens_per_microbatch {chosen['max_tokens_per_microbatch']} "
                 f"({chosen['pieces_per_micro_batch']} piece(s) per micro-batch of {chosen['micro_batch_tokens']} "
                 f"tokens), gradient_checkpointing {chosen['gradient_checkpointing']}, KV cache "
                 f"{gib(chosen['kv_cache_bytes'])} = {chosen['kv_blocks']} blocks of {KV_BLOCK_TOKENS} tokens "
                 f"({chosen['kv_tokens_needed']} tokens at full length), max_num_seqs {chosen['max_num_seqs']}")
    return lines
