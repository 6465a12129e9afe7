"""The normalised GRU (rmsnorm/rnn.py) against torch's GRU and the paper's formulas: the cell, the layer over
padded sequences, the placement of its four norms, Nematus' second-GRU bias, and the fused hidden-side norms
against the separate ones."""

import pytest
import torch

from rmsnorm import NormGRU, NormGRUCell, NormSpec

NORMS = ["none", "layernorm", "l2norm", "rmsnorm", "prmsnorm"]


# ---- the cell -----------------------------------------------------------------------------------------------


def _copy_from_torch(ref: torch.nn.GRUCell, cell: NormGRUCell) -> None:
    h = ref.hidden_size
    with torch.no_grad():
        cell.weight_ih.copy_(ref.weight_ih)
        cell.weight_hh.copy_(ref.weight_hh)
        cell.bias.copy_(ref.bias_ih + torch.cat([ref.bias_hh[: 2 * h], torch.zeros(h, dtype=ref.bias_hh.dtype)]))
        ref.bias_hh[2 * h :].zero_()  # torch's candidate has a hidden bias inside r * (.); ours does not


def test_gru_cell_without_norm_is_torch_gru_cell():
    torch.manual_seed(0)
    ref = torch.nn.GRUCell(5, 7).double()
    cell = NormGRUCell(5, 7, "none").double()
    _copy_from_torch(ref, cell)
    x, h = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    torch.testing.assert_close(cell(x, h), ref(x, h))
    gx = torch.autograd.grad(cell(x.requires_grad_(), h).sum(), x)[0]
    torch.testing.assert_close(gx, torch.autograd.grad(ref(x, h).sum(), x)[0])


@pytest.mark.parametrize("norm", ["none", "rmsnorm"])
def test_a_gru_with_its_bias_on_the_state_side_is_nematus_gru2(norm):
    """r, u = sigmoid(N(W x) + N(U h + b)); h~ = tanh(r * N(Ux h + bx) + N(Wx x)), written out by hand."""
    torch.manual_seed(0)
    cell = NormGRUCell(5, 4, NormSpec(norm, eps=1e-5), bias_on_state=True)
    with torch.no_grad():
        cell.bias.normal_()
    x, h = torch.randn(3, 5), torch.randn(3, 4)
    n = (lambda t: t) if norm == "none" else (lambda t: t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-5))
    w, wx = cell.weight_ih[:8], cell.weight_ih[8:]
    u_, ux = cell.weight_hh[:8], cell.weight_hh[8:]
    b, bx = cell.bias[:8], cell.bias[8:]
    r, u = torch.sigmoid(n(x @ w.t()) + n(h @ u_.t() + b)).chunk(2, -1)
    cand = torch.tanh(r * n(h @ ux.t() + bx) + n(x @ wx.t()))
    torch.testing.assert_close(cell(x, h), u * h + (1 - u) * cand)
    input_side = NormGRUCell(5, 4, NormSpec(norm, eps=1e-5))
    input_side.load_state_dict(cell.state_dict())
    assert not torch.allclose(input_side(x, h), cell(x, h))  # the bias moved, not a no-op


def test_gru_layer_without_norm_is_torch_gru_and_masks_padding():
    torch.manual_seed(0)
    ref = torch.nn.GRU(4, 6).double()
    layer = NormGRU(4, 6, "none").double()
    cell = torch.nn.GRUCell(4, 6).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(ref, f"{name}_l0"))
    _copy_from_torch(cell, layer.forward_cell)
    with torch.no_grad():
        ref.bias_hh_l0.copy_(cell.bias_hh)
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    torch.testing.assert_close(layer(x)[0], ref(x)[0])
    mask = torch.ones(5, 2, dtype=torch.float64)
    mask[3:, 1] = 0  # second sequence has 3 steps
    out, last = layer(x, mask)
    torch.testing.assert_close(last[1], ref(x[:3, 1:2])[0][-1, 0])


@pytest.mark.parametrize("norm", NORMS)
def test_normalised_cell_places_four_norms_and_backpropagates(norm):
    cell = NormGRUCell(6, 8, NormSpec(norm, p=0.25)).double()
    norms = [cell.norm_x_gates, cell.norm_x_cand, *cell.norm_h.norms]
    if norm != "none":
        assert [n.weight.shape[0] for n in norms] == [16, 8, 16, 8]
        # the RMS family has no shift (the paper); LayerNorm keeps its bias: its centring removes the cell's
        assert all((n.bias is not None) == (norm == "layernorm") for n in norms)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h: cell(x, h), (x, h))


def test_rmsnorm_cell_is_invariant_to_rescaling_its_weights():
    torch.manual_seed(0)
    cell = NormGRUCell(6, 8, NormSpec("rmsnorm", eps=0.0)).double()
    x, h = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    out = cell(x, h)
    with torch.no_grad():
        cell.weight_ih.mul_(7.0)
        cell.bias.mul_(7.0)
        cell.weight_hh.mul_(0.2)
    torch.testing.assert_close(cell(x, h), out)


@pytest.mark.parametrize("norm", ["rmsnorm", "prmsnorm", "l2norm"])
def test_fused_hidden_norms_equal_the_separate_ones(norm):
    torch.manual_seed(0)
    cell = NormGRUCell(6, 16, NormSpec(norm, p=0.25)).double()
    with torch.no_grad():
        for n in cell.norm_h.norms:
            n.weight.normal_()
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    h = torch.randn(5, 16, dtype=torch.float64, requires_grad=True)
    params = [x, h, *(n.weight for n in cell.norm_h.norms), cell.weight_hh]

    def run():
        out = cell(x, h)
        return (out, *torch.autograd.grad((out * torch.arange(16.0, dtype=torch.float64)).sum(), params))

    from rmsnorm.kernels import dispatch

    ks, inv_ns, eps = cell.norm_h._fused
    fused_out = dispatch.block_row_norm(h @ cell.weight_hh.t(), [n.weight for n in cell.norm_h.norms], ks, inv_ns, eps)
    assert fused_out is not None
    fused = run()
    with dispatch.reference_only():
        reference = run()
    for a, b in zip(fused, reference, strict=True):
        torch.testing.assert_close(a, b)
