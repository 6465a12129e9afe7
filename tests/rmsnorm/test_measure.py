"""measure_swap: a user's model timed under each norm, interleaved, with the norms' share and its bound."""

import pytest
import torch
from torch import nn

from rmsnorm.measure import measure_swap


def _build():
    return nn.Sequential(nn.Linear(32, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, 64), nn.LayerNorm(64),
                         nn.Linear(64, 8))


def test_every_variant_is_timed_against_layernorm_with_an_interval_a_share_and_peak_memory():
    result = measure_swap(_build, lambda: (torch.randn(16, 32),), norms=("layernorm", "rmsnorm"),
                          impls=("fused", "composite"), rounds=3, warmup=1, device="cpu")
    names = [v.name for v in result.variants]
    assert names == ["layernorm", "layernorm/composite", "rmsnorm", "rmsnorm/composite", "none"]
    ref = result.variants[0]
    assert ref.speedup is None and ref.sec_per_step > 0
    for v in result.variants[1:]:
        lo, hi = v.interval
        assert lo <= v.speedup <= hi  # the estimate inside its interval
    assert all(v.peak_bytes and v.peak_bytes > 0 for v in result.variants)
    # every norm variant's share attributed by the profiler too; the identity model has no norm to attribute
    assert all(0 < v.profiled_share < 1 for v in result.variants if v.name != "none")
    assert result.variants[-1].profiled_share is None
    lo, hi = result.share_interval
    assert lo <= result.share <= hi and result.bound == result.share
    text = str(result)
    assert "| rmsnorm/composite |" in text and "(Amdahl)" in text
    assert result.swaps[1] == "layernorm/composite: 2 norm modules swapped, 0 state keys dropped"


def test_without_memory_no_profiler_pass_and_a_self_check_times_layernorm_twice():
    result = measure_swap(_build, lambda: (torch.randn(16, 32),), norms=("layernorm",), rounds=3, warmup=1,
                          device="cpu", memory=False, self_check=True, profile=False)
    assert [v.name for v in result.variants] == ["layernorm", "none", "layernorm#again"]
    assert all(v.peak_bytes is None and v.profiled_share is None for v in result.variants)


def test_fewer_than_two_rounds_is_refused():
    with pytest.raises(ValueError, match="at least 2 rounds"):
        measure_swap(_build, lambda: (torch.randn(4, 32),), rounds=1)
