"""Input validation shared by every op: bad input is a ValueError naming the argument.

These checks run before any kernel so that a wrong shape, dtype or device never turns into
a NaN, an out-of-bounds read or a hang. The value checks (finite rewards, token ids in range)
cost one device sync each; they are what lets a training run fail loudly at step 1.

Inside `torch.compile` the value checks are skipped (a host sync would break the graph): shapes,
dtypes and devices are still checked while tracing, but values must be validated outside the
compiled region (e.g. by one eager call of the loss on the first batch).
"""
from __future__ import annotations

import torch


def check_tensor(x, name, *, floating=None, integer=None, ndim=None):
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}")
    if integer and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise ValueError(f"`{name}` must be an integer tensor, got dtype {x.dtype}")
    if ndim is not None and x.dim() not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        raise ValueError(f"`{name}` must have {ndim} dimensions, got shape {tuple(x.shape)}")
    return x


def check_shape(x, name, shape):
    if x is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"`{name}` has shape {tuple(x.shape)}, expected {tuple(shape)}")


def check_same_device(ref: torch.Tensor, **tensors):
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"`{name}` is on {t.device} but the inputs are on {ref.device}")


def tracing() -> bool:
    """Inside torch.compile's tracing: value checks (host syncs) are skipped there."""
    return torch.compiler.is_compiling()


def check_finite(x, name):
    if x is not None and not tracing() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"`{name}` contains NaN or inf")


def check_token_ids(token_ids, vocab_size, name="token_ids"):
    check_tensor(token_ids, name, integer=True)
    if token_ids.numel() and not tracing() and (int(token_ids.min()) < 0 or int(token_ids.max()) >= vocab_size):
        raise ValueError(
            f"`{name}` must lie in [0, {vocab_size}) (the vocabulary), "
            f"got values in [{int(token_ids.min())}, {int(token_ids.max())}]"
        )


def check_temperature(temperature):
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"`temperature` must be a positive number, got {temperature!r}")


def check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {sorted(choices)}, got {value!r}")


def check_cu_seqlens(cu_seqlens, num_tokens, name="cu_seqlens"):
    """Offsets [S+1] of each packed sequence: start at 0, never decrease, end at N.

    Equal neighbours (an empty sequence) are allowed: such a sequence adds nothing to the loss.
    """
    check_tensor(cu_seqlens, name, integer=True, ndim=1)
    if cu_seqlens.numel() < 2:
        raise ValueError(f"`{name}` needs at least 2 entries (S+1 offsets), got {cu_seqlens.numel()}")
    if tracing():
        return
    c = cu_seqlens.detach().to("cpu", torch.int64)
    if int(c[0]) != 0:
        raise ValueError(f"`{name}` must start at 0, got {int(c[0])}")
    if bool((c[1:] < c[:-1]).any()):
        raise ValueError(f"`{name}` must be non-decreasing, got {c.tolist()[:16]}")
    if int(c[-1]) != num_tokens:
        raise ValueError(f"`{name}` must end at the number of tokens {num_tokens}, got {int(c[-1])}")
