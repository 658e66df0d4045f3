"""Statistics over seeds, for the demo and the benchmarks: a mean with its 95 % confidence
interval, and a paired comparison of two methods run on the same seeds.

- `mean_ci`: mean ± the half-width of Student's t interval (n - 1 degrees of freedom);
- `paired_comparison`: the per-seed differences' mean, its t interval, the paired t-test's
  two-sided p-value and the exact sign-flip (randomisation) test's p-value, which assumes only
  that, with no difference between the methods, each seed's difference is as likely negative
  as positive (with 8 seeds: all 256 sign patterns, smallest possible p = 2/256 ≈ 0.008).
- `holm`: Holm's step-down adjustment of several p-values (one comparison per method).

Student's t distribution for integer degrees of freedom has a closed form (Abramowitz & Stegun
26.7.3-4: a finite series in θ = atan(t / √ν)), so no statistics package is needed.
"""
from __future__ import annotations

import itertools
import math

import numpy as np


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with integer `df` >= 1 degrees of freedom."""
    if not isinstance(df, int) or df < 1:
        raise ValueError(f"`df` must be an int >= 1, got {df!r}")
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:  # odd: A = 2/π (θ + sinθ (cosθ + 2/3 cos³θ + ... + (2·4···(ν-3))/(1·3···(ν-2)) cos^(ν-2)θ))
        term, series = c, 0.0
        for k in range(1, (df - 1) // 2 + 1):
            if k > 1:
                term *= c * c * (2 * k - 2) / (2 * k - 1)
            series += term
        inside = 2 / math.pi * (theta + s * series) if df > 1 else 2 / math.pi * theta
    else:  # even: A = sinθ (1 + 1/2 cos²θ + (1·3)/(2·4) cos⁴θ + ... + (1·3···(ν-3))/(2·4···(ν-2)) cos^(ν-2)θ)
        term, series = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c * c * (2 * k - 1) / (2 * k)
            series += term
        inside = s * series
    return min(max(1.0 - inside, 0.0), 1.0)


def t_quantile(q: float, df: int) -> float:
    """The `q` quantile (q in (0.5, 1)) of Student's t with integer `df`, by bisection."""
    if not 0.5 < q < 1:
        raise ValueError(f"`q` must lie in (0.5, 1), got {q!r}")
    target = 2 * (1 - q)  # two-sided tail probability
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > target else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values, level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the `level` t interval) of `values` (None skipped); the half-width
    is nan with fewer than 2 values."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float("nan")
    half = t_quantile(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(half)


def sign_flip_p(differences) -> float:
    """Exact two-sided p-value of the paired randomisation test: the share of the 2^n sign
    patterns whose |mean| is at least the observed one (n <= 20)."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0 or d.size > 20:
        raise ValueError(f"`differences` must hold 1 to 20 values, got {d.size}")
    observed = abs(d.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    means = np.abs(signs @ d) / d.size
    return float(np.mean(means >= observed - 1e-12))


def paired_comparison(a, b, level: float = 0.95) -> dict:
    """`a` - `b` seed by seed (equal lengths, paired by position): `diff` (mean), `ci` (half-width
    of its t interval), `p_t` (paired t-test), `p_sign_flip` (exact randomisation test), `n`."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)  # None reads as NaN
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"`a` and `b` must be paired lists of >= 2 values, got {a.shape} and {b.shape}")
    for name, x in (("a", a), ("b", b)):
        if not np.isfinite(x).all():  # a missing value would give NaN p-values, which compare as neither
            raise ValueError(f"`{name}` must hold finite numbers only, got {x.tolist()}")
    d = a - b
    mean, half = mean_ci(d, level)
    sd = d.std(ddof=1)
    if sd == 0:
        p_t = 1.0 if mean == 0 else 0.0
    else:
        p_t = t_two_sided_p(mean / (sd / math.sqrt(d.size)), d.size - 1)
    return {"diff": mean, "ci": half, "p_t": p_t, "p_sign_flip": sign_flip_p(d), "n": int(d.size)}


def holm(p_values) -> list[float]:
    """Holm's adjusted p-values, in the input order (family-wise error over the comparisons)."""
    p = list(p_values)
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted
