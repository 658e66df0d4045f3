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


def load_tokenizer(name_or_path, field: str = "model_name_or_path", **kwargs):
    """The tokenizer saved with a model (the built-in model's for None / 'embedded'); `kwargs`
    go to `from_pretrained` (trust_remote_code, revision)."""
    if is_embedded(name_or_path):
        from g2rpo_fast.models.builtin import BUILTIN_DIR

        name_or_path, kwargs = BUILTIN_DIR, {}  # the built-in model's own tokenizer, shipped beside its weights
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as exc:  # not found / not downloadable / no tokenizer files
        raise ValueError(f"`{field}`: cannot load the tokenizer of {name_or_path}: {_first_line(exc)}") from None
    return with_pad_token(tokenizer)


def with_pad_token(tokenizer):
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_of_model(model, **kwargs):
    """The tokenizer saved beside a model the user built or loaded (`model.name_or_path`); a
    `ValueError` naming `processing_class` and `model` when there is none to load."""
    from transformers import AutoTokenizer

    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not name:
        raise ValueError(f"`processing_class`: the `model` ({type(model).__name__}) was not loaded from a path or hub "
                         f"name, so it has no tokenizer of its own to load: pass its tokenizer as processing_class")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"`processing_class`: cannot load the tokenizer of the `model` ({type(model).__name__} from "
                         f"{name}): {_first_line(exc)}; pass its tokenizer as processing_class") from None
    return with_pad_token(tokenizer)


def check_vocabulary(tokenizer, embedding_rows: int | None, model_name: str) -> None:
    """Every id the tokenizer can produce must index the model's embeddings."""
    if embedding_rows is None:
        return
    size = len(tokenizer)
    if size > embedding_rows:
        raise ValueError(f"`processing_class`: the tokenizer has {size} tokens but {model_name} embeds only "
                         f"{embedding_rows} (ids >= {embedding_rows} would index past its embeddings): not this "
                         f"model's tokenizer")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def model_config(name_or_path, **kwargs):
    """A model's config only (no weights): the built-in model's for None / 'embedded'."""
    from transformers import AutoConfig

    if is_embedded(name_or_path):
        from g2rpo_fast.models.builtin import BUILTIN_DIR

        name_or_path, kwargs = BUILTIN_DIR, {}
    try:
        return AutoConfig.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ValueError(f"`model_name_or_path`: cannot load the config of {name_or_path}: {_first_line(exc)}") \
            from None


def model_context_length(name_or_path, **kwargs) -> int | None:
    """Positions the model supports (max_position_embeddings), from its config only."""
    from g2rpo_fast.data.validation import context_length_of

    return context_length_of(model_config(name_or_path, **kwargs))


def load_model(name_or_path, field: str = "model_name_or_path", init_kwargs: dict | None = None):
    """The causal LM at `name_or_path` in float32 (the trainer's master weights), loaded with
    `init_kwargs` (`model_init_kwargs`: revision, trust_remote_code, attn_implementation, ...)."""
    if is_embedded(name_or_path):
        from g2rpo_fast.models.builtin import load_builtin_model

        return load_builtin_model()[0]
    from transformers import AutoModelForCausalLM

    from g2rpo_fast.models.builtin import dtype_kwarg

    kwargs = dict(init_kwargs or {})
    if "dtype" not in kwargs and "torch_dtype" not in kwargs:  # a dtype of the user's loads as asked
        kwargs.update(dtype_kwarg("float32"))
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except OSError as exc:
        raise ValueError(f"`{field}`: cannot load {name_or_path}: {_first_line(exc)}") from None


def load_model_and_tokenizer(name_or_path, field: str = "model_name_or_path"):
    if is_embedded(name_or_path):
        from g2rpo_fast.models.builtin import load_builtin_model

        return load_builtin_model()
    return load_model(name_or_path, field), load_tokenizer(name_or_path, field)
