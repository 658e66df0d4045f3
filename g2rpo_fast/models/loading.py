"""Model loading: the embedded tiny model, or any Hugging Face causal LM.

The tokenizer and the model's context length load first (`load_tokenizer`,
`model_context_length`, cheap), so the data can be checked against them before the weights
load (`load_model`). `check_model_source` runs before anything heavy is imported.
"""
from __future__ import annotations

import os
import re

from g2rpo_fast.data.loading import hub_offline, is_embedded, looks_like_local_path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_model_source(name, field: str = "model_name_or_path") -> None:
    """A local model directory exists and holds config.json; a hub id is well formed and,
    offline, already cached. `ValueError` naming `field` otherwise."""
    if is_embedded(name):
        return
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ValueError(f"`{field}`: {name} holds no config.json: not a saved model (save_pretrained) "
                             f"or checkpoint directory")
        return
    if os.path.exists(name):
        raise ValueError(f"`{field}`: {name} is a file; give the model's directory or a hub name")
    if looks_like_local_path(name) or not _HUB_ID.match(name):
        raise ValueError(f"`{field}`: no such directory: {name}")
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ValueError(f"`{field}`: {name} is not a local directory, and the hub is off (HF_HUB_OFFLINE) "
                             f"with no cached copy")


def load_tokenizer(name_or_path, field: str = "model_name_or_path"):
    if is_embedded(name_or_path):
        from g2rpo_fast.models.builtin import BUILTIN_DIR

        name_or_path = BUILTIN_DIR  # the built-in model's own tokenizer, shipped beside its weights
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except OSError as exc:  # not found / not downloadable: transformers raises OSError
        raise ValueError(f"`{field}`: cannot load the tokenizer of {name_or_path}: {exc}") from None
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_config(name_or_path):
    """The transformers config of a model (a directory holding only config.json is enough)."""
    from transformers import AutoConfig

    if is_embedded(name_or_path):
        from g2rpo_fast.models.builtin import BUILTIN_DIR

        name_or_path = BUILTIN_DIR
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"`model_name_or_path`: cannot load the config of {name_or_path}: {exc}") from None


def model_context_length(name_or_path) -> int | None:
    """Positions the model supports (max_position_embeddings), from its config only."""
    from transformers import AutoConfig

    from g2rpo_fast.data.validation import context_length_of

    if is_embedded(name_or_path):
        from g2rpo_fast.models.builtin import BUILTIN_DIR

        return context_length_of(AutoConfig.from_pretrained(BUILTIN_DIR))

    try:
        return context_length_of(AutoConfig.from_pretrained(name_or_path))
    except (OSError, ValueError) as exc:
        raise ValueError(f"`model_name_or_path`: cannot load the config of {name_or_path}: {exc}") from None


def load_model(name_or_path, field: str = "model_name_or_path"):
    if is_embedded(name_or_path):
        from g2rpo_fast.models.builtin import load_builtin_model

        return load_builtin_model()[0]
    from transformers import AutoModelForCausalLM

    from g2rpo_fast.models.builtin import dtype_kwarg

    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **dtype_kwarg("float32"))
    except OSError as exc:
        raise ValueError(f"`{field}`: cannot load {name_or_path}: {exc}") from None


def load_model_and_tokenizer(name_or_path, field: str = "model_name_or_path"):
    if is_embedded(name_or_path):
        from g2rpo_fast.models.builtin import load_builtin_model

        return load_builtin_model()
    return load_model(name_or_path, field), load_tokenizer(name_or_path, field)
