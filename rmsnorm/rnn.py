"""GRU and LSTM with normalisation inside the cell, placed as in the paper's Theano reference
(`rlngru_layer`, `rlnlstm_layer`).

GRU:

Four norms, each with its own gain: input->gates [r; u] jointly (bias added before the norm),
input->candidate (bias before the norm), hidden->gates [r; u] jointly, hidden->candidate:

    r, u = sigmoid(N1(W x + b) + N3(U h))
    h~   = tanh(r * N4(Ux h) + N2(Wx x + bx))
    h'   = u * h + (1 - u) * h~

With `norm="none"` the cell is torch.nn.GRUCell (gate order r, u=z, candidate) with its hidden biases
folded into `bias` and no hidden bias on the candidate.

The sequence layer projects the inputs of all time steps at once (one matmul), outside the loop; each step is
then one matmul for [U; Ux] h, the four norms and the gate arithmetic. The native ops (both layers) take the
projections un-normalised and normalise them in their row pass; the Python loop normalises them all at once
before it (`project_inputs`).

The layers (`NormGRU`, `NormLSTM`) run that loop in one native op per direction where they can
(`native_plan`: CPU, float32/float64, the fused kernel built, norms it computes: none, LayerNorm, the RMS
family and, in the LSTM, the batch norm with statistics per time step; csrc/recurrent_cpu.cpp), forward and
backward through time; elsewhere, and with `native=False`, the Python loop over the cells below, which is the
reference the op is tested against.
"""

from __future__ import annotations

import torch
from torch import nn

from rmsnorm.blocks import BlockNorm
from rmsnorm.kernels import cpu, dispatch
from rmsnorm.norms import AffineNorm, LayerNorm, NoNorm, StepBatchNorm
from rmsnorm.reference import NormConfigError
from rmsnorm.registry import recurrent_norm_names
from rmsnorm.spec import NormSpec


def recurrent_spec(norm: NormSpec | str, per_step: bool = False) -> NormSpec:
    """The spec of a norm that may sit inside a recurrent cell, or a NormConfigError naming those that may.
    `per_step`: the cell also takes norms with statistics per time step (recurrent batch normalisation)."""
    spec = norm if isinstance(norm, NormSpec) else NormSpec(norm)
    if not (spec.info.recurrent or per_step and spec.info.per_step is not None):
        raise NormConfigError(f"norm '{spec.name}' has no place inside this recurrent cell; use one of "
                              f"{', '.join(recurrent_norm_names(per_step))}")
    # each norm keeps its usual shift: none for the RMS family (as the paper), a bias for LayerNorm, whose
    # mean subtraction removes the cell's own bias added before it (as in Nematus' layer-normalised GRU)
    return spec


#: norm kinds of the native op (csrc/recurrent_cpu.cpp)
_NONE, _RMS, _LAYER, _BATCH = 0, 1, 2, 3


def _native_norm(norm: nn.Module | None, width: int):
    """(kind, k, inv_n, eps, gain, bias) of a norm the native op computes, or None; `norm=None`: no norm there."""
    if norm is None or isinstance(norm, NoNorm):
        return _NONE, width, 0.0, 0.0, None, None
    if isinstance(norm, StepBatchNorm):  # its statistics per step: the op takes them with `batch_extras`
        return (_BATCH, width, 0.0, norm.eps, norm.weight, norm.bias) if norm.num_features == width else None
    if not isinstance(norm, AffineNorm) or norm.impl != "fused" or norm.num_features != width:
        return None
    if isinstance(norm, LayerNorm):
        return _LAYER, width, 1.0 / width, norm.eps, norm.weight, norm.bias
    stat = norm.statistic()
    return None if stat is None else (_RMS, stat[0], stat[1], norm.eps, norm.weight, norm.bias)


def native_plan(norms: list[tuple[nn.Module, int]], x: torch.Tensor):
    """The native op's (ints, doubles, tensors) for a cell's norms [(norm, width), ...] on input x,
    or None where the Python loop runs (another device or dtype, a norm it does not compute, the kernels off,
    the kernel not built, TorchScript)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or not dispatch.enabled():
        return None
    if torch.jit.is_scripting() or cpu.module() is None:
        return None
    forms = [_native_norm(norm, width) for norm, width in norms]
    if any(f is None for f in forms):
        return None
    ints = [i for kind, k, *_ in forms for i in (kind, k)]
    doubles = [float(v) for _, _, inv_n, eps, *_ in forms for v in (inv_n, eps)]
    tensors = [t for *_, gain, bias in forms for t in (gain, bias)]
    if any(t is not None and t.dtype != x.dtype for t in tensors):
        return None
    return ints, doubles, tensors


def batch_extras(norm_h: StepBatchNorm, norm_c: StepBatchNorm, x: torch.Tensor):
    """What the native LSTM op takes besides the plan for its per-step batch norms, read at each call (the
    training flag changes): ints {train, max_steps}, doubles {momentum}, the four running estimates; None where
    the two norms differ in those settings or their buffers are not x's dtype (the Python loop runs)."""
    running = [norm_h.running_mean, norm_h.running_var, norm_c.running_mean, norm_c.running_var]
    if (norm_h.max_steps != norm_c.max_steps or norm_h.momentum != norm_c.momentum or norm_h.training != norm_c.training
            or any(r.dtype != x.dtype or r.device != x.device for r in running)):
        return None
    return [int(norm_h.training), norm_h.max_steps], [float(norm_h.momentum)], running


def _cached_plan(cell: nn.Module, x: torch.Tensor, norms, tag: str = ""):
    """`native_plan` for a cell, worked out once per (device, dtype, kernels switch, weights' dtype, tag) and
    kept, as BlockNorm keeps its plan: a decoder asks for it at every step, where working it out cost 20 us of a
    330 us step."""
    key = (x.device.type, x.dtype, dispatch.enabled(), cell.weight_hh.dtype, tag)
    cache = cell.__dict__.setdefault("_native_plans", {})
    if key not in cache:
        cache[key] = native_plan(norms(), x)
    return cache[key]


class NormGRUCell(nn.Module):
    """`bias_on_state=True` moves the bias from the input projections to the hidden ones, inside their norms
    and under the reset gate, as Nematus' second GRU of the conditional GRU adds it:

        r, u = sigmoid(N1(W x) + N3(U h + b))
        h~   = tanh(r * N4(Ux h + bx) + N2(Wx x))
    """

    def __init__(self, input_size: int, hidden_size: int, norm: NormSpec | str = "none", bias_on_state: bool = False,
                 native: bool = True):
        super().__init__()
        self.native = native  # False: `step` in Python (the reference) even where the native op applies
        spec = recurrent_spec(norm)
        h = hidden_size
        self.input_size, self.hidden_size, self.bias_on_state = input_size, hidden_size, bias_on_state
        self.weight_ih = nn.Parameter(torch.empty(3 * h, input_size))  # [W_r; W_u; W_x]
        self.bias = nn.Parameter(torch.zeros(3 * h))
        self.weight_hh = nn.Parameter(torch.empty(3 * h, h))  # [U_r; U_u; U_x]
        self.norm_x_gates, self.norm_x_cand = spec.build(2 * h), spec.build(h)
        self.norm_h = BlockNorm(spec, (2 * h, h))  # [U_r; U_u] h and U_x h, fused where the kernel applies
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper's setting: N(0, 0.01) for input weights, orthogonal square blocks for hidden ones."""
        nn.init.normal_(self.weight_ih, std=0.01)
        for block in self.weight_hh.data.chunk(3, 0):
            nn.init.orthogonal_(block)
        nn.init.zeros_(self.bias)

    def project_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """N1(W x + b) and N2(Wx x + bx) for inputs of any leading shape: all time steps in one go."""
        bias = None if self.bias_on_state else self.bias
        gates, cand = torch.nn.functional.linear(x, self.weight_ih, bias).split(
            (2 * self.hidden_size, self.hidden_size), dim=-1)
        return self.norm_x_gates(gates), self.norm_x_cand(cand)

    def native_plan(self, x: torch.Tensor, normalised_inputs: bool = False):
        """The native op's settings for this cell's norms (N1, N2 on the input projections, N3, N4 on the hidden
        ones) on input x, or None (`native_plan`); `normalised_inputs`: for inputs `project_inputs` has
        normalised already (N1 and N2 none in the op)."""
        h = self.hidden_size
        inputs = (None, None) if normalised_inputs else (self.norm_x_gates, self.norm_x_cand)
        norms = (*inputs, *self.norm_h.norms)
        return _cached_plan(self, x, lambda: list(zip(norms, (2 * h, h, 2 * h, h), strict=True)),
                            tag="normalised inputs" if normalised_inputs else "")

    def input_projection(self, x: torch.Tensor) -> torch.Tensor:
        """W x + b (the bias where `bias_on_state` does not move it), un-normalised: what the native op starts from."""
        return torch.nn.functional.linear(x, self.weight_ih, None if self.bias_on_state else self.bias)

    def run_native(self, proj: torch.Tensor, h_prev: torch.Tensor, plan, mask: torch.Tensor | None = None,
                   reverse: bool = False) -> torch.Tensor:
        """The native op over (T, B, 3H) projections from h_prev: the outputs (T, B, H)."""
        ints, doubles, gains = plan
        return cpu.module().gru_sequence(proj.contiguous(), h_prev, self.weight_hh,
                                         self.bias if self.bias_on_state else None, mask, *gains,
                                         [int(reverse), *ints], doubles)

    def step(self, x_gates: torch.Tensor, x_cand: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """One step from `project_inputs`' output for this step: the native op over a one-step sequence where it
        applies (a decoder that steps beside its attention gets one autograd node a step instead of a dozen),
        else `step_python`."""
        plan = self.native_plan(h_prev, normalised_inputs=True) if self.native else None
        if plan is None:
            return self.step_python(x_gates, x_cand, h_prev)
        return self.run_native(torch.cat([x_gates, x_cand], dim=-1).unsqueeze(0), h_prev, plan)[0]

    def step_python(self, x_gates: torch.Tensor, x_cand: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        """The reference step."""
        hidden = torch.nn.functional.linear(h_prev, self.weight_hh, self.bias if self.bias_on_state else None)
        h_gates, h_cand = self.norm_h(hidden)
        r, u = torch.sigmoid(x_gates + h_gates).chunk(2, dim=-1)
        cand = torch.tanh(r * h_cand + x_cand)
        return u * h_prev + (1.0 - u) * cand  # = cand + u * (h_prev - cand)

    def forward(self, x: torch.Tensor, h_prev: torch.Tensor | None = None) -> torch.Tensor:
        if h_prev is None:
            h_prev = x.new_zeros(x.shape[0], self.hidden_size)
        plan = self.native_plan(h_prev) if self.native else None
        if plan is None:
            return self.step_python(*self.project_inputs(x), h_prev)
        return self.run_native(self.input_projection(x).unsqueeze(0), h_prev, plan)[0]


class NormGRU(nn.Module):
    """A (bidirectional) GRU layer over (T, B, input) sequences with an optional (T, B) 0/1 padding mask.

    Returns outputs (T, B, H * directions) and the last hidden state of each direction; padded steps keep
    the previous state, so the backward direction starts at each sequence's own last token.
    """

    def __init__(self, input_size: int, hidden_size: int, norm: NormSpec | str = "none", bidirectional: bool = False,
                 bias_on_state: bool = False, native: bool = True):
        super().__init__()
        self.forward_cell = NormGRUCell(input_size, hidden_size, norm, bias_on_state)
        self.backward_cell = NormGRUCell(input_size, hidden_size, norm, bias_on_state) if bidirectional else None
        self.native = native  # False: the Python loop over the cell (the reference)

    def uses_native(self, x: torch.Tensor) -> bool:
        """Whether a forward on x runs the native op."""
        return self.native and self.forward_cell.native_plan(x) is not None

    def _run(self, cell: NormGRUCell, x: torch.Tensor, mask: torch.Tensor | None, h: torch.Tensor | None,
             reverse: bool):
        plan = cell.native_plan(x) if self.native else None
        if plan is None:
            return self._run_python(cell, x, mask, h, reverse)
        if h is None:
            h = x.new_zeros(x.shape[1], cell.hidden_size)
        out = cell.run_native(cell.input_projection(x), h, plan, mask, reverse)
        return out, out[0] if reverse else out[-1]

    @staticmethod
    def _run_python(cell: NormGRUCell, x: torch.Tensor, mask: torch.Tensor | None, h: torch.Tensor | None,
                    reverse: bool):
        x_gates, x_cand = (t.unbind(0) for t in cell.project_inputs(x))
        masks = mask.unsqueeze(-1).unbind(0) if mask is not None else None
        steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
        if h is None:
            h = x.new_zeros(x.shape[1], cell.hidden_size)
        outputs = [None] * x.shape[0]
        for t in steps:
            h_new = cell.step_python(x_gates[t], x_cand[t], h)
            h = h_new if masks is None else torch.lerp(h, h_new, masks[t])
            outputs[t] = h
        return torch.stack(outputs), h

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, h0: torch.Tensor | None = None):
        out_f, last_f = self._run(self.forward_cell, x, mask, h0, reverse=False)
        if self.backward_cell is None:
            return out_f, last_f
        out_b, last_b = self._run(self.backward_cell, x, mask, None, reverse=True)
        return torch.cat([out_f, out_b], dim=-1), torch.cat([last_f, last_b], dim=-1)


class NormLSTMCell(nn.Module):
    """LSTM with normalisation inside the cell, placed as the paper's `rlnlstm_layer` (and Cooijmans et al.'s
    batch-normalised LSTM): one norm over the input projections of all four gates jointly (bias before it),
    one over the hidden projections jointly, the bias again after both; the cell state is carried
    un-normalised and normalised on its way out:

        i, f, o, g = split(N_h(U h) + N_x(W x + b_x) + b)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(N_c(c'))

    Gate blocks are stored in the reference code's order i, f, o, g (one sigmoid covers the first three);
    torch.nn.LSTMCell's order is i, f, g, o. With `norm="none"` and torch's blocks reordered
    (`TORCH_GATE_ORDER`), b_x = bias_ih and b = bias_hh, it is that cell. A norm with per-step statistics
    (batchnorm) gets the time step and the mask of valid rows.
    """

    #: where each of our gate blocks (i, f, o, g) sits in torch.nn.LSTM's layout (i, f, g, o)
    TORCH_GATE_ORDER = (0, 1, 3, 2)

    def __init__(self, input_size: int, hidden_size: int, norm: NormSpec | str = "none"):
        super().__init__()
        spec = recurrent_spec(norm, per_step=True)
        h = hidden_size
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * h, input_size))
        self.bias_ih = nn.Parameter(torch.zeros(4 * h))  # inside the input norm
        self.weight_hh = nn.Parameter(torch.empty(4 * h, h))
        self.bias = nn.Parameter(torch.zeros(4 * h))  # after both norms
        self.per_step = not spec.info.recurrent
        if self.per_step:
            build = spec.info.per_step
            self.norm_x = build(4 * h, eps=spec.eps, p=spec.p, affine=spec.affine, bias=False)
            self.norm_h = build(4 * h, eps=spec.eps, p=spec.p, affine=spec.affine, bias=False)
            self.norm_c = build(h, eps=spec.eps, p=spec.p, affine=spec.affine, bias=True)
        else:
            self.norm_x, self.norm_h, self.norm_c = spec.build(4 * h), spec.build(4 * h), spec.build(h)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reading task's reference: square blocks orthogonal x 0.05, others Glorot-uniform, biases 0."""
        for weight in (self.weight_ih, self.weight_hh):
            for block in weight.data.chunk(4, 0):
                if block.shape[0] == block.shape[1]:
                    nn.init.orthogonal_(block, gain=0.05)
                else:
                    nn.init.xavier_uniform_(block)
        nn.init.zeros_(self.bias_ih)
        nn.init.zeros_(self.bias)

    def native_plan(self, x: torch.Tensor):
        """The native op's settings for this cell's norms (N_x, N_h, N_c) on input x, or None: (ints, doubles, gains,
        running), the per-step batch norms' extras (`batch_extras`) added to the first two and in `running` (else
        empty). The op normalises the projections itself (N_x) except where the norm is the per-step batch norm:
        `native_inputs` then hands it normalised projections and N_x is none in the op."""
        h = self.hidden_size
        plan = _cached_plan(self, x, lambda: [(None if self.per_step else self.norm_x, 4 * h), (self.norm_h, 4 * h),
                                              (self.norm_c, h)])
        if plan is None or not self.per_step:
            return None if plan is None else (*plan, [])
        extras = batch_extras(self.norm_h, self.norm_c, x)
        if extras is None:
            return None
        return plan[0] + extras[0], plan[1] + extras[1], plan[2], extras[2]

    def project_inputs(self, x: torch.Tensor, mask: torch.Tensor | None = None, add_bias: bool = True) -> torch.Tensor:
        """N_x(W x + b_x) + b for (T, B, input) sequences or (B, input) steps: all time steps at once (the
        bias after the norms is added here, once, rather than at every step; `add_bias=False` leaves it to
        the native op, which adds it inside its gate pass)."""
        proj = torch.nn.functional.linear(x, self.weight_ih, self.bias_ih)
        if not self.per_step:
            normed = self.norm_x(proj)
        elif proj.dim() == 2:
            normed = self.norm_x(proj, 0, mask)
        else:
            normed = self.norm_x.forward_sequence(proj, mask)
        return normed + self.bias if add_bias else normed

    def native_inputs(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """What the native op starts from, contiguous: W x + b_x, which the op normalises in its row pass, or for the
        per-step batch norm (statistics over a step's rows, taken outside the op) N_x(W x + b_x); the bias after
        the norms is the op's."""
        if self.per_step:
            return self.project_inputs(x, mask, add_bias=False).contiguous()
        return torch.nn.functional.linear(x, self.weight_ih, self.bias_ih).contiguous()

    def step(self, x_proj: torch.Tensor, h: torch.Tensor, c: torch.Tensor, t: int = 0,
             mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from `project_inputs`' output for this step."""
        hs = self.hidden_size
        hidden = h @ self.weight_hh.t()
        hidden = self.norm_h(hidden, t, mask) if self.per_step else self.norm_h(hidden)
        gates = hidden + x_proj
        ifo, g = gates.split((3 * hs, hs), dim=-1)
        i, f, o = torch.sigmoid(ifo).chunk(3, dim=-1)
        c = torch.addcmul(f * c, i, torch.tanh(g))
        out = self.norm_c(c, t, mask) if self.per_step else self.norm_c(c)
        return o * torch.tanh(out), c

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)
            state = (zeros, zeros)
        return self.step(self.project_inputs(x), *state)


class NormLSTM(nn.Module):
    """A (bidirectional) LSTM layer over (T, B, input) sequences with an optional (T, B) 0/1 padding mask and a
    learned initial hidden state per direction (the cell state starts at 0), as the reading task's reference.

    Returns outputs (T, B, H * directions) and the last hidden state of each direction; padded steps keep
    the previous state, so the backward direction starts at each sequence's own last token.
    """

    def __init__(self, input_size: int, hidden_size: int, norm: NormSpec | str = "none",
                 bidirectional: bool = False, learn_h0: bool = True, native: bool = True):
        super().__init__()
        directions = 2 if bidirectional else 1
        self.cells = nn.ModuleList(NormLSTMCell(input_size, hidden_size, norm) for _ in range(directions))
        self.h0 = nn.Parameter(torch.zeros(directions, hidden_size), requires_grad=learn_h0)
        self.native = native  # False: the Python loop over the cell (the reference)

    def uses_native(self, x: torch.Tensor) -> bool:
        """Whether a forward on x runs the native op."""
        return self.native and self.cells[0].native_plan(x) is not None

    def _run(self, cell: NormLSTMCell, x: torch.Tensor, mask: torch.Tensor | None, h0: torch.Tensor, reverse: bool):
        plan = cell.native_plan(x) if self.native else None
        if plan is None:
            return self._run_python(cell, x, mask, h0, reverse)
        ints, doubles, gains, running = plan
        proj = cell.native_inputs(x, mask)
        out = cpu.module().lstm_sequence(proj, h0.expand(x.shape[1], -1), cell.weight_hh, cell.bias, mask, *gains,
                                         [int(reverse), *ints], doubles, running)
        return out, out[0] if reverse else out[-1]

    @staticmethod
    def _run_python(cell: NormLSTMCell, x: torch.Tensor, mask: torch.Tensor | None, h0: torch.Tensor, reverse: bool):
        proj = cell.project_inputs(x, mask).unbind(0)
        masks = mask.unbind(0) if mask is not None else [None] * x.shape[0]
        steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
        h = h0.expand(x.shape[1], -1)
        c = x.new_zeros(x.shape[1], cell.hidden_size)
        outputs = [None] * x.shape[0]
        for t in steps:
            h_new, c_new = cell.step(proj[t], h, c, t, masks[t])
            if masks[t] is None:
                h, c = h_new, c_new
            else:
                m = masks[t].unsqueeze(-1)
                h, c = torch.lerp(h, h_new, m), torch.lerp(c, c_new, m)
            outputs[t] = h
        return torch.stack(outputs), h

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        runs = [self._run(cell, x, mask, self.h0[d], reverse=d == 1) for d, cell in enumerate(self.cells)]
        if len(runs) == 1:
            return runs[0]
        return torch.cat([r[0] for r in runs], dim=-1), torch.cat([r[1] for r in runs], dim=-1)
