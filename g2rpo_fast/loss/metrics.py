"""The loss's metrics (`kl`, `clip_ratio_low`, `clip_ratio_high`, `clip_ratio`), written once
for both paths: each is the mean over the tokens that count, weighted by `w_t`."""
from __future__ import annotations

import torch


@torch.no_grad()
def loss_metrics(kl, low, high, weights: torch.Tensor) -> dict:
    """Detached scalars from per-token `kl` (None: no reference policy, reported as 0) and the
    clip indicators `low` / `high` (`[N]`, 0 or 1; never both 1 on one token)."""
    total = weights.sum().clamp(min=1.0)

    def mean(x):
        return (x.to(weights.dtype) * weights).sum() / total

    return {
        "kl": mean(kl) if kl is not None else weights.new_zeros(()),
        "clip_ratio_low": mean(low),
        "clip_ratio_high": mean(high),
        "clip_ratio": mean(low + high),
    }
