"""The G²RPO-A trainer: the training loop by phase, and nothing else.

`trainer.py` (`G2RPOTrainer`: set-up, `training_step`, `train`), with its set-up in
`components.py`, its roll-out rounds in `generation.py`, its checkpoint state in `state.py` and
its held-out evaluation in `held_out.py` (mixins of `G2RPOTrainer`); its arguments in
`arguments.py` (TRL's signature); the phases of a step: `batch.py` (the loss inputs),
`optimize.py`, `metrics_log.py`; around them `config.py` (`G2RPOConfig`), `trl_names.py` (TRL's
GRPOConfig names) and `preflight.py` (the CLI's checks before torch). What the loop calls
lives below, in packages of their own: `rollout/` (guided roll-outs), `rewards/` (scoring),
`packing/` (the packed training forward), `distributed/`, `checkpointing/`, `evaluation.py`,
`runtime.py`.

Light on purpose: the CLI imports `trainer.config` and `trainer.preflight` before torch.
"""
