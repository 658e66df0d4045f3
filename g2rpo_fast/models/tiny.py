"""A tiny Qwen3-architecture causal LM built in-package (no download).

Same architecture as the Qwen3 models the paper trains (RMSNorm, RoPE, GQA, SwiGLU, QK-norm),
so every code path the trainer and kernels use on real models is exercised, at ~0.6 M
parameters so CPU roll-outs take milliseconds.
"""
from __future__ import annotations


def tiny_qwen3_config(
    vocab_size: int,
    hidden_size: int = 128,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 32,
    intermediate_size: int = 256,
    max_position_embeddings: int = 128,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    **overrides,
):
    """A ``transformers.Qwen3Config`` for a tiny model; ``overrides`` go to the config as is."""
    from transformers import Qwen3Config

    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be > 0, got {vocab_size}")
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        attention_dropout=0.0,
        use_cache=True,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    kwargs.update(overrides)
    return Qwen3Config(**kwargs)


def build_tiny_model(seed: int = 0, tokenizer=None, config=None, **config_overrides):
    """A randomly initialised ``Qwen3ForCausalLM`` (fp32, eval mode), deterministic in ``seed``.

    Without ``config`` the vocabulary and special ids come from ``tokenizer`` (default: the
    built-in character tokenizer); the embedding is rounded up to a multiple of 8.
    """
    import torch
    from transformers import Qwen3ForCausalLM

    if config is None:
        if tokenizer is None:
            from g2rpo_fast.models.tokenizer import build_char_tokenizer

            tokenizer = build_char_tokenizer()
        vocab_size = -(-len(tokenizer) // 8) * 8
        config = tiny_qwen3_config(
            vocab_size,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **config_overrides,
        )
    # A private generator state: building a model never perturbs the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    return model.eval()
