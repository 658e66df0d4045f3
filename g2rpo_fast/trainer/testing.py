"""Tiny, fast pieces for tests and examples: a random tiny Qwen3, the char tokenizer and a
small addition dataset (no warm start, no download)."""
from __future__ import annotations


def tiny_model_and_tokenizer(seed: int = 0, hidden_size: int = 32, layers: int = 2, attn_implementation="sdpa"):
    from g2rpo_fast.models.tiny import build_tiny_model
    from g2rpo_fast.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    model = build_tiny_model(seed, tokenizer=tok, hidden_size=hidden_size, num_hidden_layers=layers,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=16, intermediate_size=64)
    model.config._attn_implementation = attn_implementation
    return model, tok


def tiny_dataset(n: int = 16, seed: int = 0, difficulties=(1, 2), split: str = "train"):
    from g2rpo_fast.data.arithmetic import make_dataset

    return make_dataset(n, seed=seed, difficulties=list(difficulties), split=split)


def digit_fraction_reward(prompts, completions, **kwargs):
    """A dense toy reward (share of digit characters) so that even a random policy gets
    non-constant rewards within a group."""
    out = []
    for c in completions:
        text = c if isinstance(c, str) else c[-1]["content"]
        out.append(sum(ch.isdigit() for ch in text) / max(len(text), 1))
    return out
