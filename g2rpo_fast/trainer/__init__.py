"""The G²RPO-A trainer: the training loop by phase, and nothing else.

`trainer.py` (`G2RPOTrainer`: set-up, `training_step`, `train`), with its set-up in
`components.py` and its checkpoint state in `state.py` (both mixins of `G2RPOTrainer`); the
phases of a step: `batch.py` (the loss inputs), `optimize.py`, `metrics_log.py`; around them
`config.py` (`G2RPOConfig`), `preflight.py` (the CLI's checks before torch) and
`eval_checkpoint.py` (`g2rpo-fast eval`). What the loop calls lives below, in packages of their
own: `rollout/` (guided roll-outs), `rewards/` (scoring), `packing/` (the packed training
forward), `distributed/`, `checkpointing/`, `evaluation.py`, `runtime.py`.

Light on purpose: the CLI imports `trainer.config` and `trainer.preflight` before torch.
"""
