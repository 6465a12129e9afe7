"""The one interval rule every table uses (rmsnorm/stats.py), against hand-computed values."""

import math

import pytest

from rmsnorm.interleaved import speedup, speedup_interval
from rmsnorm.stats import difference_interval, mean_interval, t975, within_noise


def test_mean_interval_of_three_seeds_is_students_t():
    mean, lo, hi = mean_interval([10.0, 12.0, 14.0])
    assert mean == 12.0
    assert hi - mean == pytest.approx(4.303 * 2.0 / math.sqrt(3))  # sd 2, t(2) = 4.303
    assert mean_interval([5.0]) == (5.0, 5.0, 5.0)


def test_welch_difference_and_the_noise_rule():
    diff, lo, hi = difference_interval([10.0, 11.0, 12.0], [20.0, 21.0, 22.0])
    assert diff == -10.0 and hi < 0 and not within_noise((lo, hi))
    diff, lo, hi = difference_interval([10.0, 14.0, 12.0], [11.0, 13.0, 12.5])
    assert within_noise((lo, hi))
    assert difference_interval([1.0], [2.0, 3.0]) is None
    assert t975(2.7) == t975(2) and t975(10_000) == 1.96


def test_a_speedup_lies_strictly_inside_its_interval():
    ref = [1.00, 1.10, 0.95, 1.30, 1.02, 0.99, 1.05, 1.20, 1.00, 1.01]
    other = [0.85, 0.97, 0.80, 1.20, 0.88, 0.86, 0.90, 1.00, 0.84, 0.86]
    est = speedup(ref, other)
    lo, hi = speedup_interval(ref, other)
    assert lo < est < hi and lo > 0
    # paired: a round where both are slow does not widen the interval as unpaired times would
    assert hi - lo < 0.05
