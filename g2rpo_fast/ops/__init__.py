"""The ops, one file each, all of one shape: the checked public function, its plain PyTorch
reference (the spec, `*_ref`) and the autograd Function over its Triton kernel in
`g2rpo_fast.kernels.<op>`. Which of the two runs is decided once, in `backend.py`."""
from .advantages import group_advantages
from .fused_linear import fused_linear_logps
from .logps import per_token_logps

__all__ = ["fused_linear_logps", "group_advantages", "per_token_logps"]
