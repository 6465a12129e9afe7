"""swap_norms: every norm of a user's model replaced by another of the registry, its state carried across as the
report says, and the new norm really computed in every mode."""

import pytest
import torch
from torch import nn

from rmsnorm import NormConfigError, RMSNorm
from rmsnorm.reference import rms_norm_reference
from rmsnorm.swap import NormState, register_norm_type, swap_norms


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial values for every parameter: fresh norms have gain 1 and bias 0, which would hide the copy."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    return model


def _encoder(norm_first: bool = True) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
    return _randomise(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False))


def test_every_layernorm_of_an_encoder_becomes_rmsnorm_with_its_gain_and_the_report_says_what_was_dropped():
    model = _encoder()
    swapped, report = swap_norms(model, "rmsnorm")
    assert swapped is not model and isinstance(model.layers[0].norm1, nn.LayerNorm)  # a copy unless inplace
    paths = [s.path for s in report.swapped]
    assert paths == ["layers.0.norm1", "layers.0.norm2", "layers.1.norm1", "layers.1.norm2"]
    for s in report.swapped:
        new, old = swapped.get_submodule(s.path), model.get_submodule(s.path)
        assert isinstance(new, RMSNorm) and new.eps == old.eps
        assert torch.equal(new.weight, old.weight) and s.copied == ["weight"] and s.dropped == ["bias"]
    before, after = set(model.state_dict()), set(swapped.state_dict())
    assert before - after == set(report.dropped_keys) and after - before == set(report.added_keys) == set()
    assert "changes the function" in str(report) and report.function_changing


@pytest.mark.parametrize("mode", ["train", "eval", "no_grad", "inference_mode"])
def test_the_swapped_encoder_computes_rmsnorm_in_every_mode(mode):
    model = _encoder()
    swapped, report = swap_norms(model, "rmsnorm")
    assert report.fast_paths_off == ["layers.0", "layers.1"]
    x = torch.randn(3, 5, 16)
    # the reference: the same layers run by hand, norm by norm, with RMSNorm's formula
    def by_hand(x):
        for layer in swapped.layers:
            n1 = rms_norm_reference(x, layer.norm1.weight, None, layer.norm1.eps)
            x = x + layer.self_attn(n1, n1, n1, need_weights=False)[0]
            n2 = rms_norm_reference(x, layer.norm2.weight, None, layer.norm2.eps)
            x = x + layer.linear2(layer.activation(layer.linear1(n2)))
        return x
    with torch.no_grad():
        expected = by_hand(x)
    swapped.train(mode == "train")
    if mode == "no_grad":
        with torch.no_grad():
            out = swapped(x)
    elif mode == "inference_mode":
        with torch.inference_mode():
            out = swapped(x)
    else:
        out = swapped(x)
    torch.testing.assert_close(out.detach(), expected, atol=1e-5, rtol=1e-5)


def test_without_turning_the_fast_path_off_torch_would_compute_layernorm_from_rmsnorms_tensors():
    """The reason swap_norms turns the fast path off: the check that it is needed at all."""
    swapped, _ = swap_norms(_encoder(), "rmsnorm")
    x = torch.randn(3, 5, 16)
    swapped.eval()
    with torch.no_grad():
        right = swapped(x)
        for layer in swapped.layers:  # the fast path on again (it also needs a bias tensor: a zero one)
            layer.activation_relu_or_gelu = 1
            layer.norm1.bias, layer.norm2.bias = nn.Parameter(torch.zeros(16)), nn.Parameter(torch.zeros(16))
        again = swapped(x)
    swapped.train()
    torch.testing.assert_close(swapped(x).detach(), right, atol=1e-5, rtol=1e-5)  # zero shift: RMSNorm's output
    wrong = again
    assert not torch.allclose(right, wrong, atol=1e-3)


def test_torchs_rmsnorm_subclasses_and_eps_and_init_options():
    class MyLayerNorm(nn.LayerNorm):
        pass

    model = nn.Sequential(nn.Linear(8, 8), MyLayerNorm(8, eps=1e-3), nn.RMSNorm(8), nn.Linear(8, 8), nn.LayerNorm(8))
    _randomise(model)
    swapped, report = swap_norms(model, "layernorm")
    assert [s.path for s in report.swapped] == ["1", "2", "4"]
    assert swapped[1].eps == 1e-3 and swapped[2].eps == torch.finfo(torch.float32).eps  # torch's None
    assert report.swapped[1].reset == ["bias"] and torch.equal(swapped[2].bias, torch.zeros(8))
    assert set(swapped.state_dict()) - set(model.state_dict()) == set(report.added_keys) == {"2.bias"}
    reset, _ = swap_norms(model, "rmsnorm", eps=1e-6, init="reset")
    assert reset[1].eps == 1e-6 and torch.equal(reset[1].weight, torch.ones(8))
    inplace, _ = swap_norms(model, "prmsnorm", p=0.25, inplace=True)
    assert inplace is model and model[4].k == 2


def test_device_dtype_and_a_hook_for_other_norm_classes():
    class ScaleNorm(nn.Module):  # a user's own norm: one learnt scale over the L2 norm
        def __init__(self, d):
            super().__init__()
            self.d, self.g = d, nn.Parameter(torch.full((d,), 2.0))

        def forward(self, x):
            return self.g * x / x.norm(dim=-1, keepdim=True)

    register_norm_type(ScaleNorm, lambda m: NormState(m.d, 1e-8, m.g, None))
    model = nn.Sequential(nn.Linear(4, 4), ScaleNorm(4)).double()
    swapped, report = swap_norms(model, "rmsnorm")
    assert isinstance(swapped[1], RMSNorm) and swapped[1].weight.dtype == torch.float64
    assert torch.equal(swapped[1].weight, torch.full((4,), 2.0, dtype=torch.float64))
    # the state_dict names the gain 'weight' now: the report says which key left and which came
    assert report.swapped[0].copied == ["weight"]


def test_a_norm_over_several_dimensions_is_refused_naming_the_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.LayerNorm([4, 6, 6]))
    with pytest.raises(NormConfigError, match=r"^1 \(LayerNorm\): normalises over \(4, 6, 6\)"):
        swap_norms(model, "rmsnorm")
    with pytest.raises(NormConfigError, match="unknown norm 'rms'"):
        swap_norms(nn.LayerNorm(4), "rms")


def test_the_swapped_model_trains():
    torch.manual_seed(0)
    swapped, _ = swap_norms(_encoder(), "rmsnorm")
    head = nn.Linear(16, 1)
    x, y = torch.randn(32, 5, 16), torch.randn(32, 1)
    opt = torch.optim.Adam([*swapped.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(60):
        loss = nn.functional.mse_loss(head(swapped(x).mean(1)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
