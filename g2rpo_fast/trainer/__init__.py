"""The G²RPO-A trainer (`trainer.py`), read by phase: `rollouts.py` (generate + score),
`batch.py` (the loss inputs), `optimize.py`, `metrics_log.py`; around it `config.py`,
`evaluation.py`, `checkpoint.py`, `run_dir.py`, `preflight.py`, `distributed.py`, `runtime.py`,
and the packed training forward (`policy_forward.py`, `packed_attention.py`).

Light on purpose: the CLI imports `trainer.config` and `trainer.preflight` before torch.
"""
