"""The native recurrent op (csrc/recurrent_cpu.cpp) against the Python loop over the cells, its reference:
outputs, last states and every gradient, for every norm a cell holds, with and without padding masks, in
both directions, with Nematus' state-side bias, at odd widths; float64 gradcheck of the op itself; and the
cases that must keep the Python loop."""

import pytest
import torch

from rmsnorm import NormGRU, NormGRUCell, NormLSTM, NormSpec
from rmsnorm.kernels import cpu, dispatch

pytestmark = pytest.mark.skipif(cpu.module() is None, reason="the fused CPU kernel did not build")

NORMS = ["none", "layernorm", "rmsnorm", "prmsnorm", "l2norm"]
D = torch.float64


def _layer(kind, norm, bidirectional, dtype=D, hidden=6, **kw):
    torch.manual_seed(0)
    cls = NormGRU if kind == "GRU" else NormLSTM
    layer = cls(5, hidden, NormSpec(norm, p=0.5), bidirectional=bidirectional, **kw).to(dtype)
    with torch.no_grad():  # move every gain, bias and h0 off its initial value so that each gradient matters
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def _mask(dtype=D):
    mask = torch.ones(7, 3, dtype=dtype)
    mask[4:, 1] = 0  # three lengths in one batch
    mask[2:, 2] = 0
    return mask


def _run(layer, x, mask, native):
    layer.native = native
    out, last = layer(x, mask)
    # a weighted sum: every output position contributes a different gradient
    loss = (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out).sin()).sum() + last.square().sum()
    params = [x] + [p for p in layer.parameters() if p.requires_grad]
    return out, last, torch.autograd.grad(loss, params)


def _assert_same(layer, x, mask, **tol):
    assert layer.uses_native(x)
    native, python = _run(layer, x, mask, True), _run(layer, x, mask, False)
    torch.testing.assert_close(native[0], python[0], **tol)
    torch.testing.assert_close(native[1], python[1], **tol)
    names = ["x"] + [n for n, p in layer.named_parameters() if p.requires_grad]
    for name, a, b in zip(names, native[2], python[2], strict=True):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"gradient of {name}: {m}")


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_native_layer_equals_the_python_loop(kind, norm, bidirectional, masked):
    layer = _layer(kind, norm, bidirectional)
    x = torch.randn(7, 3, 5, dtype=D, requires_grad=True)
    _assert_same(layer, x, _mask() if masked else None)


@pytest.mark.parametrize("norm", ["none", "layernorm", "rmsnorm"])
def test_native_gru_with_the_bias_on_the_state_side(norm):
    layer = _layer("GRU", norm, True, bias_on_state=True)
    _assert_same(layer, torch.randn(7, 3, 5, dtype=D, requires_grad=True), _mask())


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_native_layer_at_odd_widths_and_in_float32(kind):
    """Widths that are no multiple of the 8-lane vector loops, in float32 (the vectorised exp)."""
    layer = _layer(kind, "prmsnorm", True, dtype=torch.float32, hidden=13)
    x = torch.randn(7, 3, 5, requires_grad=True)
    _assert_same(layer, x, _mask(torch.float32), rtol=1e-4, atol=1e-5)


def _wide_case(kind, norm, dtype):
    """A batch of 21 rows (two full blocks of the op's per-row sums and a partial one) and gate blocks wide enough
    for the norms' four-accumulator row sums, with a tail (LSTM 4H = 164, GRU 2H = 134), masked."""
    layer = _layer(kind, norm, True, dtype=dtype, hidden=41 if kind == "LSTM" else 67)
    torch.manual_seed(1)
    x = torch.randn(6, 21, 5, dtype=dtype, requires_grad=True)
    mask = torch.ones(6, 21, dtype=dtype)
    mask[3:, 4] = mask[1:, 20] = 0
    return layer, x, mask


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
@pytest.mark.parametrize("norm", ["none", "layernorm", "rmsnorm", "prmsnorm"])
def test_native_layer_in_several_row_blocks_equals_the_python_loop(kind, norm):
    layer, x, mask = _wide_case(kind, norm, D)
    _assert_same(layer, x, mask)


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_native_layer_gives_the_same_bits_whatever_the_grain_and_thread_count(kind):
    """The gains' and biases' gradients are summed per block of rows fixed by the batch size, so neither the
    thread count nor the measured grain changes the order of their additions."""
    module = cpu.module()
    layer, x, mask = _wide_case(kind, "layernorm", torch.float32)
    before_grain, before_threads = module.parallel_grain(), torch.get_num_threads()
    results = []
    try:
        for grain, threads in [(1, 2), (1 << 30, 2), (1, 1), (600, 2)]:
            module.set_parallel_grain(grain)
            torch.set_num_threads(threads)
            results.append(_run(layer, x, mask, True))
    finally:
        module.set_parallel_grain(before_grain)
        torch.set_num_threads(before_threads)
    for other in results[1:]:
        for got, want in zip([other[0], other[1], *other[2]], [results[0][0], results[0][1], *results[0][2]],
                             strict=True):
            assert torch.equal(got, want)


def test_native_gru_takes_an_initial_state():
    layer = _layer("GRU", "rmsnorm", False)
    x = torch.randn(4, 3, 5, dtype=D)
    h0 = torch.randn(3, 6, dtype=D, requires_grad=True)
    grads = []
    for native in (True, False):
        layer.native = native
        out, _ = layer(x, None, h0)
        grads.append((out, torch.autograd.grad(out.sin().sum(), h0)[0]))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("bias_on_state", [False, True])
@pytest.mark.parametrize("entry", ["forward", "step"])
def test_native_gru_cell_step_equals_the_python_step(norm, bias_on_state, entry):
    """The decoder's cells step one at a time (beside the attention): the op over a one-step sequence, from the
    raw input (`forward`: the input norms in the op) or from `project_inputs`' normalised projections (`step`)."""
    torch.manual_seed(0)
    cell = NormGRUCell(5, 6, NormSpec(norm, p=0.5), bias_on_state=bias_on_state).to(D)
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, h = torch.randn(3, 5, dtype=D, requires_grad=True), torch.randn(3, 6, dtype=D, requires_grad=True)
    assert cell.native_plan(h) is not None and cell.native_plan(h, normalised_inputs=True) is not None
    runs = []
    for native in (True, False):
        cell.native = native
        out = cell(x, h) if entry == "forward" else cell.step(*cell.project_inputs(x), h)
        params = [x, h, *cell.parameters()]
        runs.append((out, *torch.autograd.grad((out * torch.arange(6.0, dtype=D)).sin().sum(), params)))
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "prmsnorm"])
@pytest.mark.parametrize("input_norm", [True, False])
def test_gru_op_gradcheck_float64(norm, input_norm):
    """The op alone: every input, gain and bias against finite differences, its input-side norms in the op or not
    (the projections then reach the gates as they are: the decoder's step on normalised inputs)."""
    torch.manual_seed(0)
    T, B, H = 3, 2, 4
    g = dict(dtype=D, requires_grad=True)
    xp, h0 = torch.randn(T, B, 3 * H, **g), torch.randn(B, H, **g)
    w, bias = torch.randn(3 * H, H, **g), torch.randn(3 * H, **g)
    # gain and bias of N_xg (2H), N_xc (H), N_hg (2H), N_hc (H)
    gains = [torch.randn(n, **g) for n in (2 * H, 2 * H, H, H, 2 * H, 2 * H, H, H)]
    kind = 2 if norm == "layernorm" else 1
    k_g, k_c = (3, 2) if norm == "prmsnorm" else (2 * H, H)
    if norm != "layernorm":
        gains[1] = gains[3] = gains[5] = gains[7] = None
    if not input_norm:
        gains[:4] = [None] * 4
    kind_x = kind if input_norm else 0
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]], dtype=D)

    def op(xp, h0, w, bias, *gains):
        return cpu.module().gru_sequence(xp, h0, w, bias, mask, *gains,
                                         [1, kind_x, k_g, kind_x, k_c, kind, k_g, kind, k_c],
                                         [1.0 / k_g, 1e-6, 1.0 / k_c, 1e-6] * 2)

    assert torch.autograd.gradcheck(op, (xp, h0, w, bias, *gains))


def _lstm_op_inputs(T, B, H):
    """Float64 inputs of the LSTM op that ask for gradients: projections, h0, hidden weights, bias, and six
    gains and biases of the three norms (input and hidden side 4H, cell H)."""
    torch.manual_seed(0)
    g = dict(dtype=D, requires_grad=True)
    xp, h0, w = torch.randn(T, B, 4 * H, **g), torch.randn(B, H, **g), torch.randn(4 * H, H, **g)
    gains = [torch.randn(4 * H, **g), torch.randn(4 * H, **g), torch.randn(4 * H, **g), torch.randn(4 * H, **g),
             torch.randn(H, **g), torch.randn(H, **g)]
    return xp, h0, w, torch.randn(4 * H, **g), gains


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm", "prmsnorm"])
@pytest.mark.parametrize("input_norm", [True, False])
def test_lstm_op_gradcheck_float64(norm, input_norm):
    """The op alone, its input-side norm in the op or not (the projections then reach the gates as they are)."""
    T, B, H = 3, 2, 4
    xp, h0, w, bias, gains = _lstm_op_inputs(T, B, H)
    kind = 2 if norm == "layernorm" else 1
    k_wide, k_cell = (3, 2) if norm == "prmsnorm" else (4 * H, H)
    if norm != "layernorm":
        gains[1] = gains[3] = gains[5] = None
    if not input_norm:
        gains[0] = gains[1] = None
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]], dtype=D)
    kind_x = kind if input_norm else 0

    def op(xp, h0, w, bias, *gains):
        return cpu.module().lstm_sequence(xp, h0, w, bias, mask, *gains,
                                          [0, kind_x, k_wide, kind, k_wide, kind, k_cell],
                                          [1.0 / k_wide, 1e-6, 1.0 / k_wide, 1e-6, 1.0 / k_cell, 1e-6], [])

    assert torch.autograd.gradcheck(op, (xp, h0, w, bias, *gains))


def _batch_layer(bidirectional, max_steps, training):
    layer = _layer("LSTM", "batchnorm", bidirectional)
    for cell in layer.cells:
        for norm in (cell.norm_x, cell.norm_h, cell.norm_c):
            norm.max_steps = max_steps  # slots shared past max_steps: the updates' order matters
            norm.running_mean = 0.1 * torch.randn(max_steps, norm.num_features, dtype=D)
            norm.running_var = 0.5 + torch.rand(max_steps, norm.num_features, dtype=D)
    return layer.train(training)


def _buffers(layer):
    return {name: b.clone() for name, b in layer.named_buffers()}


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("max_steps", [3, 16])
@pytest.mark.parametrize("training", [True, False])
def test_native_lstm_batch_norm_equals_the_python_loop(bidirectional, masked, max_steps, training):
    """Statistics per time step over the valid rows (steps 4-6 of the mask hold one valid row, step 7 of the
    second case none), the running estimates per step moved the same way, evaluation from them."""
    layer = _batch_layer(bidirectional, max_steps, training)
    x = torch.randn(7, 3, 5, dtype=D, requires_grad=True)
    mask = _mask() if masked else None
    assert layer.uses_native(x)
    start = _buffers(layer)
    runs = []
    for native in (True, False):
        for name, b in layer.named_buffers():
            b.copy_(start[name])
        runs.append((_run(layer, x, mask, native), _buffers(layer)))
    (native, native_buffers), (python, python_buffers) = runs
    torch.testing.assert_close(native[0], python[0])
    torch.testing.assert_close(native[1], python[1])
    names = ["x"] + [n for n, p in layer.named_parameters() if p.requires_grad]
    for name, a, b in zip(names, native[2], python[2], strict=True):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"gradient of {name}: {m}")
    for name in start:
        torch.testing.assert_close(native_buffers[name], python_buffers[name], msg=lambda m, name=name: f"{name}: {m}")
    moved = any(not torch.equal(native_buffers[n], start[n]) for n in start)
    assert moved == training  # training moves the estimates, evaluation reads them only


def test_native_lstm_batch_norm_with_a_step_of_no_valid_row_in_float32():
    layer = _batch_layer(True, 16, True).float()
    x = torch.randn(7, 4, 5, requires_grad=True)
    mask = torch.ones(7, 4)
    mask[5:, :] = 0  # the last two steps of every row padded
    mask[3:, 1] = 0
    _assert_same(layer, x, mask, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_lstm_op_gradcheck_float64_with_batch_norm(training):
    """The op alone with per-step batch norms on both sides, one step with a single valid row."""
    T, B, H = 3, 4, 3
    xp, h0, w, bias, gains = _lstm_op_inputs(T, B, H)  # the hidden side's batch norm has no bias: gains[3] unused
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]], dtype=D)

    def op(xp, h0, w, bias, wh, wc, bc):
        running = [torch.zeros(T, 4 * H, dtype=D), torch.ones(T, 4 * H, dtype=D), torch.zeros(T, H, dtype=D),
                   torch.ones(T, H, dtype=D)]
        ints = [1, 0, 4 * H, 3, 4 * H, 3, H, int(training), T]  # reverse, no input norm, two batch norms, settings
        return cpu.module().lstm_sequence(xp, h0, w, bias, mask, None, None, wh, None, wc, bc, ints,
                                          [0.0, 0.0, 0.0, 1e-3, 0.0, 1e-3, 0.1], running)

    assert torch.autograd.gradcheck(op, (xp, h0, w, bias, gains[2], gains[4], gains[5]))


def test_cases_the_native_op_leaves_to_the_python_loop():
    x = torch.randn(4, 2, 5)
    assert NormGRU(5, 6, "rmsnorm").uses_native(x)
    assert not NormGRU(5, 6, "rmsnorm", native=False).uses_native(x)  # the reference, selected
    assert NormLSTM(5, 6, "batchnorm").uses_native(x)  # per-step statistics, in the op too
    assert not NormLSTM(5, 6, "batchnorm").double().uses_native(x)  # running estimates of another dtype
    assert not NormGRU(5, 6, NormSpec("rmsnorm", impl="composite")).uses_native(x)  # another implementation
    assert not NormGRU(5, 6, "rmsnorm").half().uses_native(x.half())  # a dtype the op does not take
    with dispatch.reference_only():
        assert not NormLSTM(5, 6, "rmsnorm").uses_native(x)  # every kernel switched off
