"""What `G2RPOTrainer(...)` was given, in TRL's form or in the older config-first form.

TRL's form is the primary one:
    G2RPOTrainer(model, reward_funcs, args=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, reward_processing_classes=None, callbacks=None,
                 optimizers=(None, None), peft_config=None)
The older form, `G2RPOTrainer(config, model=None, tokenizer=None, train_dataset=None,
eval_dataset=None, reward_funcs=None)`, is recognised by its first argument (a `G2RPOConfig`)
or by `config=`; it also takes the TRL keywords. Either way `resolve_arguments` returns one
`TrainerArguments` with a private copy of the config (the caller's object is never changed)
into which the keyword settings are folded. A keyword that contradicts the config is a
`ValueError` naming both, before anything loads.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

from .config import G2RPOConfig


def trl_signature(model=None, reward_funcs=None, args=None, train_dataset=None, eval_dataset=None,
                  processing_class=None, reward_processing_classes=None, callbacks=None, optimizers=(None, None),
                  peft_config=None):
    """TRL's `GRPOTrainer` signature (`model` may be a path, a hub name or a module)."""


def config_first_signature(config, model=None, tokenizer=None, train_dataset=None, eval_dataset=None,
                           reward_funcs=None, *, args=None, processing_class=None, reward_processing_classes=None,
                           callbacks=None, optimizers=(None, None), peft_config=None):
    """The older form: the config first, `tokenizer` for `processing_class`."""


def init_signature(form) -> inspect.Signature:
    """`form`'s signature with `self` in front: an `__init__` that takes `*args, **kwargs` shows it."""
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    signature = inspect.signature(form)
    return signature.replace(parameters=[self_param, *signature.parameters.values()])


@dataclasses.dataclass
class TrainerArguments:
    config: G2RPOConfig
    model: Any  # None (config.model_name_or_path), a path / hub name (in config.model_name_or_path) or a module
    processing_class: Any
    train_dataset: Any
    eval_dataset: Any
    reward_funcs: Any  # None: config.reward_funcs
    callbacks: list
    optimizers: tuple
    peft_config: Any


def resolve_arguments(args: tuple, kwargs: dict) -> TrainerArguments:
    config_first = (bool(args) and isinstance(args[0], G2RPOConfig)) or "config" in kwargs
    signature = inspect.signature(config_first_signature if config_first else trl_signature)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"G2RPOTrainer{signature}: {exc}") from None
    given = dict(bound.arguments)
    config = _pick_config(given)
    processing_class = _same_or_refuse(given, "processing_class", "tokenizer")
    model = given.get("model")
    reward_funcs = given.get("reward_funcs")
    config = _fold_keywords(config, model, reward_funcs, given)
    if reward_funcs is not None and not isinstance(reward_funcs, (list, tuple)):
        reward_funcs = [reward_funcs]
    if given.get("reward_processing_classes") is not None:
        raise ValueError("`reward_processing_classes`: reward models are not supported (reward functions only: "
                         "fn(prompts, completions, **columns) -> list[float])")
    optimizers = tuple(given.get("optimizers") or (None, None))
    if len(optimizers) != 2:
        raise ValueError(f"`optimizers` must be a pair (optimizer, lr_scheduler), got {len(optimizers)} entries")
    callbacks = list(given.get("callbacks") or [])
    return TrainerArguments(config, model, processing_class, given.get("train_dataset"), given.get("eval_dataset"),
                            reward_funcs, callbacks, optimizers, given.get("peft_config"))


def _pick_config(given: dict) -> G2RPOConfig:
    config, args = given.get("config"), given.get("args")
    if config is not None and args is not None and config is not args:
        raise ValueError("`config` and `args` are two different configurations: give one (`args`, TRL's name)")
    config = args if args is not None else config
    if config is None:
        model = given.get("model")
        if model is None:  # nothing of the user's: the built-in preset, as `g2rpo-fast train`
            return G2RPOConfig.from_yaml(None)
        # TRL's default output directory: named after the model
        return G2RPOConfig(output_dir=f"{model_label(model).split('/')[-1]}-G2RPO")
    if not isinstance(config, G2RPOConfig):
        raise ValueError(f"`args` must be a G2RPOConfig, got {type(config).__name__}")
    return dataclasses.replace(config)  # a private copy: the trainer folds its keywords in


def _same_or_refuse(given: dict, name: str, alias: str):
    a, b = given.get(name), given.get(alias)
    if a is not None and b is not None and a is not b:
        raise ValueError(f"`{name}` and `{alias}` are two different tokenizers: give one (`{name}`, TRL's name)")
    return a if a is not None else b


def model_label(model) -> str:
    """A model's name: its path or hub name, else its config's `_name_or_path`, else its class."""
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return name or type(model).__name__


def _fold_keywords(config: G2RPOConfig, model, reward_funcs, given: dict) -> G2RPOConfig:
    """Settings given as keywords go into the config; one the config sets otherwise is an error."""
    changes = {}
    if isinstance(model, (str, os.PathLike)):
        model = os.fspath(model)
        _refuse_conflict("model", model, "model_name_or_path", config.model_name_or_path)
        changes["model_name_or_path"] = model
    elif model is not None:
        if not callable(getattr(model, "forward", None)) or not hasattr(model, "config"):
            raise ValueError(f"`model` must be a path, a hub name or a transformers causal LM, got "
                             f"{type(model).__name__}")
        if config.model_name_or_path is not None and config.model_name_or_path != model_label(model):
            origin = model_label(model)
            origin = "built in memory" if origin == type(model).__name__ else f"from {origin!r}"
            raise ValueError(f"`model` (a {type(model).__name__} {origin}) and `args.model_name_or_path` "
                             f"({config.model_name_or_path!r}) disagree: give one")
    if reward_funcs is not None:
        listed = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        default = G2RPOConfig.default_of("reward_funcs")
        if list(config.reward_funcs) not in (default, listed):
            raise ValueError(f"`reward_funcs` ({_names(listed)}) and `args.reward_funcs` "
                             f"({_names(config.reward_funcs)}) disagree: give one")
        changes["reward_funcs"] = listed
    if given.get("train_dataset") is not None and config.dataset_name is not None:
        raise ValueError(f"`train_dataset` and `args.dataset_name` ({config.dataset_name!r}) are two training sets: "
                         f"give one")
    if given.get("eval_dataset") is not None and config.eval_dataset_name is not None:
        raise ValueError(f"`eval_dataset` and `args.eval_dataset_name` ({config.eval_dataset_name!r}) are two "
                         f"evaluation sets: give one")
    return dataclasses.replace(config, **changes) if changes else config


def _refuse_conflict(keyword: str, value, field: str, configured) -> None:
    if configured is not None and configured != value:
        raise ValueError(f"`{keyword}` ({value!r}) and `args.{field}` ({configured!r}) disagree: give one")


def _names(funcs) -> list[str]:
    return [f if isinstance(f, str) else getattr(f, "__name__", type(f).__name__) for f in funcs]
