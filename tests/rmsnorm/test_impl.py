"""`norm.impl`: every norm as fused kernels, as the composite tensor ops the paper's frameworks ran, and as torch's
own where it has one, in every placement (features, per-channel maps, inside recurrent cells): the same outputs
and gradients as the reference; and every task trains with the composite norms."""

import dataclasses

import pytest
import torch

from rmsnorm import NormConfigError, NormGRUCell, NormLSTMCell, NormSpec
from rmsnorm.reference import l2_norm_reference, rms_norm_reference

IMPLS = ["fused", "composite", "torch"]
NORMS = ["layernorm", "rmsnorm", "prmsnorm", "l2norm"]


def _reference(name, x, w, b, eps, k):
    if name == "layernorm":
        return torch.nn.functional.layer_norm(x, x.shape[-1:], w, b, eps)
    if name == "l2norm":
        return l2_norm_reference(x, w, b, eps)
    return rms_norm_reference(x, w, b, eps, k)


def _grads(y, inputs, seed=3):
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    return torch.autograd.grad(y, inputs, dy)


def _names(y) -> set[str]:
    seen, todo, names = set(), [y.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        todo += [n for n, _ in node.next_functions]
    return names


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", NORMS)
def test_feature_norms_give_the_reference_whatever_the_impl(name, impl):
    spec = NormSpec(name, p=0.25, impl=impl, bias=True)
    layer = spec.build(40).double()
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = torch.randn(3, 5, 40, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    k = layer.k if name == "prmsnorm" else None
    ref = _reference(name, x, layer.weight, layer.bias, layer.eps, k)
    torch.testing.assert_close(y, ref)
    for got, want in zip(_grads(y, (x, layer.weight, layer.bias)), _grads(ref, (x, layer.weight, layer.bias)),
                         strict=True):
        torch.testing.assert_close(got, want)
    fused_kernel = any("RowNorm" in n for n in _names(y))
    if impl == "composite":  # elementary ops only: no fused kernel anywhere in its graph
        assert not fused_kernel and "RsqrtBackward0" in _names(y)
    if impl == "fused" and name != "layernorm":
        assert fused_kernel


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", NORMS)
def test_channel_map_norms_give_the_same_maps_whatever_the_impl(name, impl):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    base = NormSpec(name, p=0.25).build2d(3).double()
    other = NormSpec(name, p=0.25, impl=impl).build2d(3).double()
    other.load_state_dict(base.state_dict())
    y, ref = other(x), base(x)
    torch.testing.assert_close(y, ref)
    for got, want in zip(_grads(y, (x, other.weight)), _grads(ref, (x, base.weight)), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("impl", ["composite", "torch"])
@pytest.mark.parametrize("name", NORMS)
@pytest.mark.parametrize("cell", [NormGRUCell, NormLSTMCell])
def test_norms_inside_recurrent_cells_give_the_fused_cells_results(cell, name, impl):
    torch.manual_seed(0)
    fused = cell(6, 8, NormSpec(name, p=0.25)).double()
    other = cell(6, 8, NormSpec(name, p=0.25, impl=impl)).double()
    other.load_state_dict(fused.state_dict())
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    state = torch.randn(4, 8, dtype=torch.float64)
    if cell is NormLSTMCell:
        state = (state, torch.randn(4, 8, dtype=torch.float64))
    out_f, out_o = fused(x, state), other(x, state)
    h_f = out_f[0] if isinstance(out_f, tuple) else out_f
    h_o = out_o[0] if isinstance(out_o, tuple) else out_o
    torch.testing.assert_close(h_o, h_f)
    params_f, params_o = [x, *fused.parameters()], [x, *other.parameters()]
    for got, want in zip(_grads(h_o, params_o), _grads(h_f, params_f), strict=True):
        torch.testing.assert_close(got, want)


def test_an_unknown_impl_is_a_clear_error():
    with pytest.raises(NormConfigError, match="norm.impl=triton is not an implementation; use one of fused"):
        NormSpec("rmsnorm", impl="triton")
    assert dataclasses.replace(NormSpec("rmsnorm", impl="composite"), p=0.5).impl == "composite"


@pytest.mark.parametrize("task", ["cifar10", "reading", "retrieval", "transformer", "translation"])
def test_every_norm_of_every_task_trains_with_the_composite_impl(task, smoke_data, tmp_path):
    from experiments.core.training.run import run_training
    from tests.conftest import compose_cfg

    cfg = compose_cfg([f"task={task}", "preset=smoke"])
    for norm in cfg.task.norms:
        summary = run_training(compose_cfg([f"task={task}", f"norm={norm}", "norm.impl=composite", "preset=smoke",
                                            f"data_dir={smoke_data}", "logger=none", "train.progress=false",
                                            "train.max_steps=2"]), tmp_path / norm)
        assert summary["norm_impl"] == "composite" and summary["identity"]["norm_impl"] == "composite"
        assert summary["config"]["norm"]["impl"] == "composite"
