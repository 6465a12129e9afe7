"""The intervals every table of the suite gives, in one place: Student's t for a mean over a few seeds or
timing rounds (95%, two-sided), and Welch's for a difference of two such means. One rule everywhere: a
difference is "within noise" when its interval contains zero."""

from __future__ import annotations

import math
from collections.abc import Sequence

# the 97.5% quantile of Student's t by degrees of freedom (any statistics table); between two entries the
# smaller df's value is used, which widens the interval a little rather than narrowing it
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}


def t975(df: float) -> float:
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom, got {df}")
    return _T975[max(k for k in _T975 if k <= df)] if df < 1000 else 1.960


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and its 95% t interval; (mean, mean, mean) for a single value (no interval to give)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def difference_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float] | None:
    """mean(a) - mean(b) and its 95% Welch interval; None unless both have two or more values."""
    if len(a) < 2 or len(b) < 2:
        return None
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((v - ma) ** 2 for v in a) / (len(a) - 1) / len(a)
    vb = sum((v - mb) ** 2 for v in b) / (len(b) - 1) / len(b)
    diff = ma - mb
    if va + vb == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t975(df) * math.sqrt(va + vb)
    return diff, diff - half, diff + half


def within_noise(interval: tuple[float, float]) -> bool:
    lo, hi = interval
    return lo <= 0.0 <= hi
