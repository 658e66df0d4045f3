"""Everything about a run that can be checked before torch, the data or the model load.

`g2rpo-fast train` calls `preflight` right after the config is built, so a user mistake
costs a second, not a model load: the output directory (`run_dir.check_output_dir`), that
`--resume` has a checkpoint to start from, the model source (a local directory with
config.json, or a hub id — cached, when offline), and the data source (a local file exists;
JSON-lines files are streamed and checked row by row, the columns the reward functions take
included). The trainer repeats the checks that
matter for API users (output directory, data rows) itself.
"""
from __future__ import annotations

from g2rpo_fast.checkpointing.run_dir import RunSetupError, check_output_dir, used_by_earlier_run
from g2rpo_fast.data.sources import check_dataset_source, reward_columns
from g2rpo_fast.models.loading import check_model_source


def preflight(config, resume: bool = False) -> None:
    """`ValueError` (a `RunSetupError` for the output directory) naming the field at fault."""
    check_output_dir(config.output_dir, resume, config.overwrite_output_dir)
    if resume and not any(n.startswith("checkpoint-") for n in used_by_earlier_run(config.output_dir)):
        raise RunSetupError(f"`resume`: no checkpoint in {config.output_dir}")
    check_model_source(config.model_name_or_path)
    from g2rpo_fast.rewards import get_reward_func  # light: no torch

    guides = [] if config.guidance_reward is None else [config.guidance_reward]
    funcs = [get_reward_func(f) for f in list(config.reward_funcs) + guides]
    check_dataset_source(config, required=reward_columns(funcs))
    if config.eval_dataset_name is not None:
        check_dataset_source(config, config.eval_dataset_name, "eval_dataset_name", train=False,
                             required=reward_columns(funcs[-1:] if guides else funcs[:1]))
