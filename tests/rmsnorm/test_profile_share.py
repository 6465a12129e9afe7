"""The profiler-attributed norm share (rmsnorm.profile_share): what it attributes, and that it can tell a step
the norms dominate from one they barely touch."""

import torch
from torch import nn

from rmsnorm import swap_norms
from rmsnorm.profile_share import default_norm_modules, profiled_norm_share


def _step_of(model, x):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x).pow(2).mean().backward()
        opt.step()

    return step


def _model(width, norm="layernorm", impl=None):
    model = nn.Sequential(nn.Linear(width, width), nn.LayerNorm(width), nn.Linear(width, width))
    if norm != "torch":
        model, _ = swap_norms(model, norm, impl=impl, inplace=True)
    return model


def test_forward_and_backward_attributed_for_each_implementation():
    torch.manual_seed(0)
    x = torch.randn(64, 128)
    for norm, impl in [("torch", None), ("layernorm", None), ("rmsnorm", None), ("rmsnorm", "composite")]:
        model = _model(128, norm, impl)
        r = profiled_norm_share(model, _step_of(model, x), steps=2)
        assert r.modules_seen == r.modules_total == 1, (norm, impl)
        # a fused kernel behind an autograd.Function records no op of its own: its backward node is still found
        assert r.forward_seconds > 0 and r.backward_seconds > 0, (norm, impl, r)
        assert 0 < r.share < 1


def test_share_tells_norm_heavy_from_norm_light_steps():
    torch.manual_seed(0)
    # many rows of a narrow layer: the norm's passes over the rows rival the small matmuls
    heavy = _model(16, "rmsnorm", "composite")
    # few rows of a wide layer: two 1024x1024 matmuls per step dwarf one norm over 8 rows
    light = _model(1024, "rmsnorm", None)
    s_heavy = profiled_norm_share(heavy, _step_of(heavy, torch.randn(4096, 16)), steps=3).share
    s_light = profiled_norm_share(light, _step_of(light, torch.randn(8, 1024)), steps=3).share
    assert s_heavy > 0.3 and s_light < 0.1 and s_heavy > 3 * s_light, (s_heavy, s_light)


def test_nested_norms_counted_once_and_no_norm_gives_none():
    from rmsnorm.blocks import BlockNorm
    from rmsnorm.spec import NormSpec

    block = nn.Sequential(nn.Linear(24, 24), BlockNorm(NormSpec("rmsnorm"), (16, 8)))
    found = default_norm_modules(block)
    assert [name for name, _ in found] == ["1"]  # the BlockNorm, not also its two inner norms
    plain = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    r = profiled_norm_share(plain, _step_of(plain, torch.randn(4, 8)), steps=1)
    assert r.share is None and r.modules_total == 0
    assert "no norm module ran" in r.describe()


def test_a_norm_that_never_runs_as_a_module_is_reported():
    class Inline(nn.Module):  # holds a norm but computes it functionally, as a native recurrent op would
        def __init__(self):
            super().__init__()
            self.lin, self.norm, self.other = nn.Linear(8, 8), nn.LayerNorm(8), nn.LayerNorm(8)

        def forward(self, x):
            y = self.norm(self.lin(x))
            return nn.functional.layer_norm(y, (8,), self.other.weight, self.other.bias)

    model = Inline()
    r = profiled_norm_share(model, _step_of(model, torch.randn(4, 8)), steps=1)
    assert (r.modules_seen, r.modules_total) == (1, 2)
    assert "only 1 of 2 norm modules" in r.describe()
