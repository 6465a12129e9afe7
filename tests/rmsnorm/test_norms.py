"""The norm layers against references: torch's own layers, float64 gradcheck, the paper's formulas and the
invariances of its Table 1."""

import pytest
import torch
import torch.nn.functional as F

import rmsnorm
from rmsnorm import NormConfigError, NormSpec, build_norm, build_norm2d, norm_names
from rmsnorm.reference import l2_norm_reference, rms_norm_reference

torch.set_default_dtype(torch.float32)


def _randomise_affine(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


@pytest.mark.parametrize("d", [1, 7, 64, 1000])
def test_rmsnorm_matches_torch_rmsnorm_values_and_grads(d):
    x = torch.randn(5, 3, d, dtype=torch.float64, requires_grad=True)
    ours = _randomise_affine(rmsnorm.RMSNorm(d, eps=1e-6).double())
    ref = torch.nn.RMSNorm(d, eps=1e-6, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(ours.weight)
    y, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y, y_ref)
    gy = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, ours.weight), gy)
    gx_ref, gw_ref = torch.autograd.grad(y_ref, (x, ref.weight), gy)
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gw, gw_ref)


def test_layernorm_matches_torch_layer_norm():
    x = torch.randn(4, 33, dtype=torch.float64)
    ours = _randomise_affine(rmsnorm.LayerNorm(33, eps=1e-5).double())
    torch.testing.assert_close(ours(x), F.layer_norm(x, (33,), ours.weight, ours.bias, 1e-5))


def test_rmsnorm_is_the_papers_formula():
    x = torch.randn(6, 10, dtype=torch.float64)
    g = torch.randn(10, dtype=torch.float64)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-8) * g
    torch.testing.assert_close(rms_norm_reference(x, g, eps=1e-8), expected)


def test_prmsnorm_uses_the_first_k_features_only():
    d, p = 32, 0.25
    layer = rmsnorm.PartialRMSNorm(d, p=p).double()
    assert layer.k == int(d * p) == 8
    x = torch.randn(3, d, dtype=torch.float64)
    expected = x / torch.sqrt((x[:, :8] ** 2).mean(-1, keepdim=True) + layer.eps)
    torch.testing.assert_close(layer(x), expected)
    x2 = x.clone()
    x2[:, 8:] *= 100  # features past k do not move the statistic
    torch.testing.assert_close(layer(x2)[:, :8], layer(x)[:, :8])


def test_prmsnorm_with_p_one_equals_rmsnorm():
    x = torch.randn(4, 50, dtype=torch.float64)
    full = _randomise_affine(rmsnorm.RMSNorm(50).double())
    part = rmsnorm.PartialRMSNorm(50, p=1.0).double()
    part.load_state_dict(full.state_dict())
    torch.testing.assert_close(part(x), full(x))


def test_l2norm_is_rmsnorm_without_sqrt_d():
    x = torch.randn(4, 16, dtype=torch.float64)
    torch.testing.assert_close(l2_norm_reference(x, eps=0.0), x / x.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(l2_norm_reference(x, eps=0.0) * 4.0, rms_norm_reference(x, eps=0.0))


FEATURE_NORMS = ["layernorm", "rmsnorm", "prmsnorm", "l2norm"]


@pytest.mark.parametrize("name", FEATURE_NORMS)
@pytest.mark.parametrize("bias", [False, True])
def test_gradcheck_feature_norms(name, bias):
    layer = _randomise_affine(build_norm(name, 12, p=0.25, bias=bias, eps=1e-6).double())
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    params = tuple(layer.parameters())
    assert torch.autograd.gradcheck(lambda x, *ps: layer(x), (x, *params))


@pytest.mark.parametrize("name", FEATURE_NORMS)
def test_gradcheck_channel_map_norms(name):
    layer = _randomise_affine(build_norm2d(name, 3, p=0.25, eps=1e-6).double())
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *ps: layer(x), (x, *layer.parameters()))


def test_channel_map_norm_normalises_each_channel_over_hw():
    layer = build_norm2d("rmsnorm", 4, bias=False).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64) * torch.arange(1, 5, dtype=torch.float64).view(1, 4, 1, 1)
    y = layer(x)
    rms = y.pow(2).mean((2, 3)).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms))
    ln = build_norm2d("layernorm", 4).double()(x)
    torch.testing.assert_close(ln, F.instance_norm(x, eps=layer.eps))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", FEATURE_NORMS)
def test_half_inputs_are_computed_in_float32(dtype, name):
    layer = _randomise_affine(build_norm(name, 64, p=0.25))
    x = torch.randn(8, 64) * 300  # x^2 overflows fp16 if squared in fp16
    y = layer(x.to(dtype))
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), layer(x.to(dtype).float()), atol=2e-2, rtol=2e-2)
    assert torch.isfinite(y).all()


# ---- invariances, the paper's Table 1 ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rmsnorm", "prmsnorm", "layernorm"])
def test_invariant_to_weight_matrix_and_dataset_rescaling(name):
    torch.manual_seed(0)
    norm = build_norm(name, 32, p=0.25, eps=0.0).double()
    W, x = torch.randn(32, 16, dtype=torch.float64), torch.randn(10, 16, dtype=torch.float64)
    out = norm(x @ W.T)
    for delta in (0.01, 3.0, 250.0):
        torch.testing.assert_close(norm(x @ (delta * W).T), out)  # weight-matrix re-scaling
        torch.testing.assert_close(norm((delta * x) @ W.T), out)  # dataset re-scaling
    scales = torch.rand(10, 1, dtype=torch.float64) * 10 + 0.1
    torch.testing.assert_close(norm((scales * x) @ W.T), out)  # single-case re-scaling


def test_table_1_measured_is_the_papers():
    # the paper for LayerNorm, RMSNorm and pRMSNorm; the BatchNorm and WeightNorm rows as in Ba et al.'s Table 1,
    # which the paper's extends
    from experiments.core.reporting.invariance import TRANSFORMS, table

    yes = {"batchnorm": {"weight matrix re-scaling", "weight vector re-scaling", "dataset re-scaling",
                         "dataset re-centering"},
           "weightnorm": {"weight matrix re-scaling", "weight vector re-scaling"},
           "layernorm": {"weight matrix re-scaling", "weight matrix re-centering", "dataset re-scaling",
                         "single case re-scaling"},
           "rmsnorm": {"weight matrix re-scaling", "dataset re-scaling", "single case re-scaling"}}
    yes["prmsnorm"] = yes["rmsnorm"]
    measured = table()
    for norm, invariant_to in yes.items():
        assert {t for t in TRANSFORMS if measured[norm][t]} == invariant_to, norm


def test_rmsnorm_is_not_recentering_invariant_but_layernorm_is():
    torch.manual_seed(0)
    W, x = torch.randn(32, 16, dtype=torch.float64), torch.randn(10, 16, dtype=torch.float64)
    shift = torch.randn(1, 16, dtype=torch.float64)
    W_centred = W + shift  # weight-matrix re-centering: every output row moves by the same vector . x
    rms, ln = build_norm("rmsnorm", 32, eps=0.0).double(), build_norm("layernorm", 32, eps=0.0).double()
    assert not torch.allclose(rms(x @ W_centred.T), rms(x @ W.T), atol=1e-3)
    torch.testing.assert_close(ln(x @ W_centred.T), ln(x @ W.T))
    # dataset re-centering: adding the same vector to every pre-activation
    h, c = x @ W.T, torch.full((1, 32), 2.5, dtype=torch.float64)
    assert not torch.allclose(rms(h + c), rms(h), atol=1e-3)
    torch.testing.assert_close(ln(h + c), ln(h))


def test_weight_vector_rescaling_changes_rmsnorm_output():
    torch.manual_seed(0)
    W, x = torch.randn(32, 16, dtype=torch.float64), torch.randn(10, 16, dtype=torch.float64)
    W2 = W.clone()
    W2[0] *= 5.0  # one weight vector only
    rms = build_norm("rmsnorm", 32, eps=0.0).double()
    assert not torch.allclose(rms(x @ W2.T), rms(x @ W.T), atol=1e-3)


# ---- the factory and its errors -------------------------------------------------------------------------


@pytest.mark.parametrize("name", norm_names())
def test_every_name_builds_both_forms(name):
    spec = NormSpec(name, p=0.25)
    assert spec.build(16)(torch.randn(4, 16)).shape == (4, 16)
    assert spec.build2d(3)(torch.randn(2, 3, 8, 8)).shape == (2, 3, 8, 8)


def test_weightnorm_reparametrises_the_layer():
    layer = NormSpec("weightnorm").reparametrize(torch.nn.Linear(4, 3))
    assert hasattr(layer, "parametrizations") and "weight" in layer.parametrizations
    assert NormSpec("rmsnorm").reparametrize(torch.nn.Linear(4, 3)).__class__ is torch.nn.Linear


def test_unknown_norm_lists_the_valid_ones():
    with pytest.raises(NormConfigError, match="valid norms are: none, batchnorm, bn_everywhere, weightnorm, layernorm"):
        NormSpec("rmsnrom")
    with pytest.raises(NormConfigError, match="unknown norm"):
        build_norm("groupnorm", 8)


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5])
def test_p_out_of_range_is_a_clear_error(p):
    with pytest.raises(NormConfigError, match="0 < p <= 1"):
        NormSpec("prmsnorm", p=p)
    with pytest.raises(NormConfigError, match="0 < p <= 1"):
        rmsnorm.PartialRMSNorm(16, p=p)


def test_k_below_one_is_a_clear_error():
    with pytest.raises(NormConfigError, match="k=int"):
        rmsnorm.PartialRMSNorm(10, p=0.05)


def test_prmsnorm_map_never_takes_fewer_than_the_minimum_positions():
    # 1% of a 4 x 4 map would be no position at all: the map form takes all 16 (the minimum), i.e. RMSNorm
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    partial = build_norm2d("prmsnorm", 3, p=0.01, eps=1e-6).double()
    torch.testing.assert_close(partial(x), build_norm2d("rmsnorm", 3, eps=1e-6).double()(x))


def test_spread_positions_cover_the_whole_map_evenly():
    from rmsnorm.reference import PARTIAL_MIN_FEATURES, spread_positions

    lattice = torch.zeros(32 * 32)
    lattice[spread_positions(32, 32, 0.125)] = 1
    lattice = lattice.view(32, 32)
    # one position in 8, as many in every row and in every column: a diagonal lattice, not whole columns
    assert lattice.sum() == 128 and (lattice.sum(0) == 4).all() and (lattice.sum(1) == 4).all()
    checker = torch.zeros(64)
    checker[spread_positions(8, 8, 0.5)] = 1
    assert (checker.view(8, 8) + checker.view(8, 8).roll(1, 1) == 1).all()  # p = 1/2: a checkerboard
    assert spread_positions(6, 6, 0.125).numel() == PARTIAL_MIN_FEATURES  # int(4.5) = 4 is below the minimum
    positions = spread_positions(4, 5, 0.25)
    assert positions.numel() == 16 and positions.unique().numel() == 16 and 0 <= positions.min() < positions.max() < 20


def test_prmsnorm_map_statistic_is_not_the_top_rows():
    # an object in the bottom half of the map only: the first k = 25% positions (the top rows) would see
    # nothing and blow the map up; the spread positions see the whole map's mean square
    x = torch.zeros(1, 1, 32, 32, dtype=torch.float64)
    x[..., 16:, :] = 1.0
    y = build_norm2d("prmsnorm", 1, p=0.25, eps=0.0, bias=False).double()(x)
    torch.testing.assert_close(y, x * 2**0.5)  # the whole map's RMS is sqrt(1/2)


@pytest.mark.parametrize("hw", [(4, 5), (8, 8)])  # 16 of 20 positions (the minimum), 16 of 64
def test_prmsnorm_map_equals_its_formula(hw):
    from rmsnorm.reference import spread_positions

    layer = _randomise_affine(build_norm2d("prmsnorm", 3, p=0.25, eps=1e-6).double())
    x = torch.randn(2, 3, *hw, dtype=torch.float64, requires_grad=True)
    rows = x.reshape(2, 3, -1)
    ms = rows[..., spread_positions(*hw, 0.25)].pow(2).mean(-1, keepdim=True)
    want = (rows / (ms + 1e-6).sqrt()).view_as(x) * layer.weight + layer.bias
    torch.testing.assert_close(layer(x), want)
    assert torch.autograd.gradcheck(lambda x, *ps: layer(x), (x, *layer.parameters()))


def test_a_registered_norm_gets_its_own_row_of_table_1():
    from experiments.core.reporting.invariance import table
    from rmsnorm import NormInfo, register_norm, unregister_norm

    register_norm(NormInfo("doubled_rms", "Doubled RMS", features=lambda d, eps, **_: torch.nn.RMSNorm(d, eps=eps)))
    try:
        row = table()["doubled_rms"]
    finally:
        unregister_norm("doubled_rms")
    assert row["dataset re-scaling"] and not row["weight matrix re-centering"]


def test_partial_statistics_names_each_prmsnorm_layers_k():
    from rmsnorm.norms import ChannelMapNorm, PartialRMSNorm, partial_statistics

    model = torch.nn.Sequential(PartialRMSNorm(64, p=0.0625), PartialRMSNorm(64, p=0.0625),
                                PartialRMSNorm(1024, p=0.0625), torch.nn.Linear(4, 4))
    assert partial_statistics(model) == ["d=64: k=4 (p=0.0625)", "d=1024: k=64 (p=0.0625)"]
    maps = ChannelMapNorm("prmsnorm", 3, p=0.5)
    assert partial_statistics(maps) == []  # the lattice is known once the layer has seen a map
    maps(torch.randn(2, 3, 6, 6))
    assert partial_statistics(maps) == ["map 6x6: k=18 of 36 positions (p=0.5)"]
    assert partial_statistics(torch.nn.LayerNorm(8)) == []
