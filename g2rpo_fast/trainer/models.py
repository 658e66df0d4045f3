"""Policy loading: the embedded tiny model, or any Hugging Face causal LM."""
from __future__ import annotations

from .data import is_embedded


def load_model_and_tokenizer(name_or_path):
    if is_embedded(name_or_path):
        from g2rpo_fast.models.warmstart import load_embedded_default

        return load_embedded_default(verbose=True)  # says so when the one-off warm start runs
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, torch_dtype="float32")
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
