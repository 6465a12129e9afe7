"""The normalised LSTM against torch.nn.LSTM(Cell), float64 gradcheck, the paper's placement, and recurrent
batch normalisation's two regimes (batch statistics in training, population statistics in evaluation)."""

import pytest
import torch

from rmsnorm import NormConfigError, NormGRUCell, NormLSTM, NormLSTMCell, NormSpec

D = torch.float64


def _copy(ref_ih, ref_hh, b_ih, b_hh, cell: NormLSTMCell):
    """torch's (i, f, g, o) blocks into our (i, f, o, g) layout."""

    def reorder(t):
        return torch.cat([t.chunk(4, 0)[k] for k in NormLSTMCell.TORCH_GATE_ORDER])

    with torch.no_grad():
        cell.weight_ih.copy_(reorder(ref_ih))
        cell.weight_hh.copy_(reorder(ref_hh))
        cell.bias_ih.copy_(reorder(b_ih))
        cell.bias.copy_(reorder(b_hh))


def test_cell_without_norm_is_torch_lstm_cell():
    torch.manual_seed(0)
    ref = torch.nn.LSTMCell(5, 7).to(D)
    cell = NormLSTMCell(5, 7, "none").to(D)
    _copy(ref.weight_ih, ref.weight_hh, ref.bias_ih, ref.bias_hh, cell)
    x, h, c = torch.randn(3, 5, dtype=D, requires_grad=True), torch.randn(3, 7, dtype=D), torch.randn(3, 7, dtype=D)
    for a, b in zip(cell(x, (h, c)), ref(x, (h, c)), strict=True):
        torch.testing.assert_close(a, b)
    g = torch.autograd.grad(sum(t.sum() for t in cell(x, (h, c))), x)[0]
    torch.testing.assert_close(g, torch.autograd.grad(sum(t.sum() for t in ref(x, (h, c))), x)[0])


def test_layer_without_norm_is_torch_lstm_and_masks_padding():
    torch.manual_seed(0)
    ref = torch.nn.LSTM(4, 6).to(D)
    layer = NormLSTM(4, 6, "none", learn_h0=False).to(D)
    _copy(ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0, layer.cells[0])
    x = torch.randn(5, 2, 4, dtype=D)
    torch.testing.assert_close(layer(x)[0], ref(x)[0])
    mask = torch.ones(5, 2, dtype=D)
    mask[3:, 1] = 0  # the second sequence has 3 steps
    _, last = layer(x, mask)
    torch.testing.assert_close(last[1], ref(x[:3, 1:2])[0][-1, 0])


def test_bidirectional_layer_learns_its_initial_states():
    layer = NormLSTM(3, 4, "rmsnorm", bidirectional=True)
    out, last = layer(torch.randn(6, 2, 3))
    assert out.shape == (6, 2, 8) and last.shape == (2, 8)
    out.sum().backward()
    assert layer.h0.grad is not None and layer.h0.grad.abs().sum() > 0


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "prmsnorm", "l2norm", "batchnorm"])
def test_normalised_cell_gradcheck_float64(norm):
    torch.manual_seed(0)
    cell = NormLSTMCell(6, 8, NormSpec(norm, p=0.25)).to(D)
    x = torch.randn(4, 6, dtype=D, requires_grad=True)
    h, c = torch.randn(4, 8, dtype=D, requires_grad=True), torch.randn(4, 8, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h, c: cell(x, (h, c)), (x, h, c))


def test_norms_sit_where_the_paper_puts_them():
    cell = NormLSTMCell(6, 8, "rmsnorm")
    assert [cell.norm_x.num_features, cell.norm_h.num_features, cell.norm_c.num_features] == [32, 32, 8]
    assert all(n.bias is None for n in (cell.norm_x, cell.norm_h, cell.norm_c))  # the RMS family: no shift
    ln = NormLSTMCell(6, 8, "layernorm")
    assert all(n.bias is not None for n in (ln.norm_x, ln.norm_h, ln.norm_c))


def test_rmsnorm_cell_is_invariant_to_rescaling_its_weight_matrices():
    torch.manual_seed(0)
    cell = NormLSTMCell(6, 8, NormSpec("rmsnorm", eps=0.0)).to(D)
    x, h, c = torch.randn(3, 6, dtype=D), torch.randn(3, 8, dtype=D), torch.randn(3, 8, dtype=D)
    before = cell(x, (h, c))
    with torch.no_grad():
        cell.weight_ih.mul_(7.0)
        cell.bias_ih.mul_(7.0)
        cell.weight_hh.mul_(0.2)
    for a, b in zip(cell(x, (h, c)), before, strict=True):
        torch.testing.assert_close(a, b)


def test_batchnorm_lstm_uses_batch_statistics_in_training_and_population_ones_in_evaluation():
    torch.manual_seed(0)
    layer = NormLSTM(3, 4, "batchnorm")
    cell = layer.cells[0]
    assert torch.allclose(cell.norm_h.weight, torch.full((16,), 0.1))  # gain 0.1, as upstream
    x = torch.randn(5, 8, 3)
    # training: a row's output depends on the other rows of the batch (their statistics)
    full = layer(x)[0][:, :4]
    half = layer(x[:, :4])[0]
    assert not torch.allclose(full[:, :4], half, atol=1e-4)
    for _ in range(200):  # the running estimates per step converge to the data's statistics
        layer(torch.randn(5, 64, 3))
    assert (cell.norm_h.running_var[:5] != 1).all() and (cell.norm_h.running_var[5:] == 1).all()
    layer.eval()
    with torch.no_grad():
        full = layer(x)[0]
        half = layer(x[:, :4])[0]
    torch.testing.assert_close(full[:, :4], half)  # evaluation: each row on its own


def test_the_gru_refuses_batch_statistics_and_the_lstm_takes_them():
    with pytest.raises(NormConfigError, match="no place inside this recurrent cell"):
        NormGRUCell(3, 4, "batchnorm")
    assert NormLSTMCell(3, 4, "bn_everywhere").per_step


@pytest.mark.parametrize("max_steps", [3, 8])  # 3: the last three of 5 steps share a slot
def test_step_batch_norm_over_a_sequence_equals_step_by_step(max_steps):
    from rmsnorm import StepBatchNorm

    torch.manual_seed(0)
    whole, steps = StepBatchNorm(6, max_steps=max_steps), StepBatchNorm(6, max_steps=max_steps)
    x, mask = torch.randn(5, 4, 6), torch.ones(5, 4)
    mask[3:, 1] = 0
    mask[4, 2:] = 0  # a step with one valid row
    for mode in ("train", "eval"):
        getattr(whole, mode)()
        getattr(steps, mode)()
        torch.testing.assert_close(whole.forward_sequence(x, mask),
                                   torch.stack([steps(x[t], t, mask[t]) for t in range(5)]))
        torch.testing.assert_close(whole.running_mean, steps.running_mean)
        torch.testing.assert_close(whole.running_var, steps.running_var)
    whole.train()
    steps.train()
    xg = x.clone().requires_grad_()
    g_whole = torch.autograd.grad(whole.forward_sequence(xg, mask).pow(2).sum(), (xg, whole.weight))
    g_steps = torch.autograd.grad(torch.stack([steps(xg[t], t, mask[t]) for t in range(5)]).pow(2).sum(),
                                  (xg, steps.weight))
    for a, b in zip(g_whole, g_steps, strict=True):  # the same gradients, up to float rounding
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("valid", [None, 5, 3, 1])
def test_step_batch_norm_is_the_formula_over_the_valid_rows(valid):
    """torch's fused batch norm on the valid rows against the statistics written out (Cooijmans et al.):
    outputs and gradients on valid rows, and the running estimates (unbiased variance)."""
    from rmsnorm import StepBatchNorm

    torch.manual_seed(0)
    norm = StepBatchNorm(6, max_steps=2, bias=True).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = (torch.randn(5, 6, dtype=torch.float64) * 3 + 1).requires_grad_()
    mask = None if valid is None else (torch.arange(5) < valid).double()
    out = norm(x, 1, mask)
    keep = torch.ones(5, dtype=torch.bool) if mask is None else mask.bool()
    xv = x[keep]
    mean, var = xv.mean(0), xv.var(0, unbiased=False)
    want = (xv - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias
    torch.testing.assert_close(out[keep], want)
    assert torch.isfinite(out).all()
    n = int(keep.sum())
    torch.testing.assert_close(norm.running_mean[1], 0.1 * mean.detach())
    torch.testing.assert_close(norm.running_var[1], 0.9 + 0.1 * var.detach() * n / max(n - 1, 1))
    assert (norm.running_mean[0] == 0).all()
    g = torch.randn(5, 6, dtype=torch.float64) * keep.unsqueeze(1)
    got = torch.autograd.grad((out * g).sum(), (x, norm.weight, norm.bias))
    ref = torch.autograd.grad((want * g[keep]).sum(), (x, norm.weight, norm.bias))
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b)
