"""The G²RPO loss, as one package.

    prepare_loss_inputs (inputs.py)  checks, flattens padded/packed (layout.py), token weights
                                     and aggregation coefficients c_t (aggregation.py)
      -> objective (objective.py)    per-token terms (ops/token_loss.py), loss = Σ c_t·L_t,
                                     metrics (metrics.py)
`G2RPOLoss` and `FusedLinearG2RPOLoss` (modules.py) are thin modules over it; `LossOptions`
(options.py) holds their validated options.
"""
from .modules import FusedLinearG2RPOLoss, G2RPOLoss
from .options import LossOptions

__all__ = ["FusedLinearG2RPOLoss", "G2RPOLoss", "LossOptions"]
