"""The exact conversion of a pre-LN model to RMSNorm: `convert_exact` (Jiang et al., NeurIPS 2023, "Pre-RMSNorm
and Pre-CRMSNorm Transformers").

In a pre-LN residual model every LayerNorm reads the residual stream, and every write into the stream is an
embedding, a table, a patch convolution or a branch's last linear. Centre each write across the features (a
linear's or conv's weight rows and bias: W <- (I - 11^T/d) W; a table along its feature dimension) and the
stream stays zero-mean, so there LayerNorm(x) = RMSNorm(x) for the same eps (both add eps inside the root).
LayerNorm's gain g and bias b then fold into the linears that read the norm's output: W' = W diag(g),
b' = b + W b_ln. The result computes the same function, up to float rounding, with RMSNorms in place of the
LayerNorms.

The model is read from its exported graph (`torch.export`), not from a list of known classes, so a model of
one's own converts as it is; whatever the walk cannot prove exact raises `NotConvertible` with one line naming the
module and why (a post-LN block, a write into the stream through a nonlinearity, something else that reads
the stream). Where a norm's output is read by something other than a linear whose weight is its own (a tied
head, a model output), the norm keeps its gain and bias as the RMSNorm's own, which is just as exact; the report
says so. An embedding table that is also read elsewhere (a head tied to it) is centred as it is read
(`CentredEmbedding`) rather than in the table; a model input that feeds the stream directly is centred on entry
by a forward pre-hook on the model.

Exact in evaluation: dropout on a branch (training mode) scales features one by one and the write is no longer
zero-mean. And training the converted model trains a Pre-RMSNorm model: its updates need not keep the writes
centred, so it stays equal to the LayerNorm model only at the weights it was converted at.
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
from dataclasses import dataclass, field

import torch
from torch import nn

from rmsnorm.norms import AffineNorm
from rmsnorm.norms import LayerNorm as OurLayerNorm
from rmsnorm.spec import build_norm
from rmsnorm.swap import fast_paths_off, replace_at


class NotConvertible(ValueError):
    """The model cannot be converted exactly: the message names the module and the reason, in one line."""


class CentredEmbedding(nn.Embedding):
    """An `nn.Embedding` whose rows are centred as they are read (the table itself unchanged, for a table that is
    also read elsewhere: a head tied to it)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = super().forward(ids)
        return out - out.mean(-1, keepdim=True)


class CentreOnEntry:
    """A forward pre-hook that centres some of a model's inputs along their feature dimension: the inputs that
    feed the residual stream directly. `inputs` holds (position, name, dim) for each."""

    def __init__(self, inputs: list[tuple[int, str, int]]):
        self.inputs = inputs

    def __call__(self, module, args, kwargs):
        args = list(args)
        for position, name, dim in self.inputs:
            if position < len(args):
                args[position] = args[position] - args[position].mean(dim, keepdim=True)
            elif name in kwargs:
                kwargs[name] = kwargs[name] - kwargs[name].mean(dim, keepdim=True)
        return tuple(args), kwargs


@dataclass
class Centred:
    what: str  # a parameter or buffer name, a module path, or a model input
    how: str  # what was done to it


@dataclass
class Converted:
    path: str
    source: str  # the class it was
    target: str  # the class it became
    eps: float
    folded_into: list[str] = field(default_factory=list)  # the weights its gain (and bias) went into
    kept: list[str] = field(default_factory=list)  # weight/bias kept on the new norm
    why_kept: str = ""
    dropped: list[str] = field(default_factory=list)  # its state_dict keys that left


@dataclass
class ConvertReport:
    to: str
    converted: list[Converted]
    centred: list[Centred]
    added_keys: list[str]  # state_dict keys the conversion added (a bias given to a linear)
    fast_paths_off: list[str]  # layers whose inference fast path would have computed LayerNorm
    max_abs_diff: float | None = None  # measured on a random batch, original vs converted, eval mode
    tolerance: float | None = None
    # where the difference is over the tolerance: each model's distance from the original run in float64
    original_error: float | None = None
    converted_error: float | None = None
    function_changing: bool = False

    @property
    def dropped_keys(self) -> list[str]:
        return [f"{c.path}.{name}" for c in self.converted for name in c.dropped]

    def __str__(self) -> str:
        checked = ("not checked" if self.max_abs_diff is None else
                   f"max |difference| on a random batch {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g})")
        if self.converted_error is not None:
            checked += (f"; against the original in float64 the original is off by {self.original_error:.3g}, the "
                        f"converted model by {self.converted_error:.3g}")
        lines = [f"convert_exact -> {self.to}: {len(self.converted)} norms; the same function ({checked})",
                 "| module | from | to | eps | folded into | kept on the norm |", "|---|---|---|---|---|---|"]
        for c in self.converted:
            kept = ", ".join(c.kept) + (f" ({c.why_kept})" if c.why_kept else "") if c.kept else "-"
            lines.append(f"| {c.path} | {c.source} | {c.target} | {c.eps:g} | {', '.join(c.folded_into) or '-'} "
                         f"| {kept} |")
        lines.append("centred so the residual stream is zero-mean:")
        lines += [f"- {c.what}: {c.how}" for c in self.centred]
        lines.append(f"state_dict keys dropped: {', '.join(self.dropped_keys) or '-'}; "
                     f"added: {', '.join(self.added_keys) or '-'}")
        if self.fast_paths_off:
            lines.append("inference fast path turned off (it computes LayerNorm itself): "
                         + ", ".join(self.fast_paths_off))
        return "\n".join(lines)


# ---- reading the exported graph ----------------------------------------------------------------------------

_IDENTITY = {"clone", "contiguous", "alias", "detach", "_to_copy", "to", "lift_fresh_copy", "dropout"}
_VIEWS = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze"}
_MOVES = {"permute", "transpose", "t", "select", "slice", "expand"}
_PARAM_VIEWS = {"t", "transpose", "permute", "slice", "split", "split_with_sizes", "chunk", "getitem"}
_LINEARS = {"linear", "matmul", "mm", "addmm"}


def _op(node) -> str:
    if node.op != "call_function":
        return node.op
    if node.target is operator.getitem:
        return "getitem"
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]


def _shape(node) -> tuple[int, ...]:
    val = node.meta.get("val")
    return tuple(int(s) for s in val.shape) if isinstance(val, torch.Tensor) else ()


def _where(node) -> str:
    stack = node.meta.get("nn_module_stack")
    path = list(stack.values())[-1][0] if stack else ""
    return path or "(model)"


def _view_dim_back(in_shape, out_shape, k: int) -> int | None:
    """The input dim a view's output dim k is (None where it splits or merges input dims)."""
    before, size = math.prod(out_shape[:k]), out_shape[k]
    for j in range(len(in_shape)):
        if math.prod(in_shape[:j]) == before and in_shape[j] == size:
            return j
    return None


def _dim_back(node, fd: int) -> int | None:
    """For a one-input op that keeps each feature a feature (a view, permute, select...), the dim of its input
    that its output dim `fd` comes from; None where the op mixes or cuts that dim."""
    op, src = _op(node), node.args[0]
    in_shape, out_shape = _shape(src), _shape(node)
    if op in _IDENTITY:
        if op == "dropout" and len(node.args) > 2 and node.args[2]:
            return None  # dropout in training mode scales features one by one
        return fd
    if op in _VIEWS:
        return _view_dim_back(in_shape, out_shape, fd)
    if op == "permute":
        return node.args[1][fd] % len(in_shape)
    if op == "transpose":
        a, b = (d % len(in_shape) for d in node.args[1:3])
        return b if fd == a else a if fd == b else fd
    if op == "t":
        return 1 - fd if len(in_shape) == 2 else fd
    if op == "select":
        dim = node.args[1] % len(in_shape)
        return fd if fd < dim else fd + 1
    if op == "slice":
        dim = node.args[1] % len(in_shape)
        return None if dim == fd and in_shape[dim] != out_shape[dim] else fd
    if op == "expand":
        j = fd - (len(out_shape) - len(in_shape))
        return j if j >= 0 and in_shape[j] == out_shape[fd] else None
    return None


def _dim_forward(node, j: int) -> int | None:
    """The output dim of `node` that its input's dim j becomes (None where lost or mixed)."""
    for k in range(len(_shape(node))):
        if _dim_back(node, k) == j:
            return k
    return None


@dataclass
class ParamView:
    """A parameter as an op reads it: its placeholder, which of its dims each of the op's weight dims is, and the
    range of each param dim it covers (split / slice of a packed weight, as MultiheadAttention's in_proj)."""

    node: object
    fqn: str
    perm: list[int]
    ranges: dict[int, tuple[int, int]]

    def rows(self, dim: int) -> tuple[int, int]:
        return self.ranges[self.perm[dim]]


class _Graph:
    def __init__(self, ep):
        self.graph = ep.graph
        sig = ep.graph_signature
        self.params = dict(sig.inputs_to_parameters)
        self.buffers = dict(sig.inputs_to_buffers)
        self.user_inputs = list(sig.user_inputs)
        self.by_name = {n.name: n for n in ep.graph.nodes}

    def fqn(self, node) -> str | None:
        if node.op != "placeholder":
            return None
        return self.params.get(node.name) or self.buffers.get(node.name)

    def param_view(self, node) -> ParamView | None:
        """The parameter an op's weight operand reads, through transposes, slices and splits; None otherwise."""
        chain = []
        while node.op != "placeholder":
            if node.op != "call_function" or _op(node) not in _PARAM_VIEWS:
                return None
            chain.append(node)
            node = node.args[0]
        fqn = self.fqn(node)
        if fqn is None:
            return None
        shape = _shape(node)
        perm, ranges = list(range(len(shape))), {d: (0, s) for d, s in enumerate(shape)}
        pending_split = None
        for step in reversed(chain):
            op = _op(step)
            if op == "t":
                perm = perm[::-1]
            elif op == "transpose":
                a, b = (d % len(perm) for d in step.args[1:3])
                perm[a], perm[b] = perm[b], perm[a]
            elif op == "permute":
                perm = [perm[d % len(perm)] for d in step.args[1]]
            elif op == "slice":
                dim = step.args[1] % len(perm) if len(step.args) > 1 else 0
                start = step.args[2] if len(step.args) > 2 and step.args[2] is not None else 0
                end = step.args[3] if len(step.args) > 3 and step.args[3] is not None else 2 ** 62
                if len(step.args) > 4 and step.args[4] != 1:
                    return None
                lo, hi = ranges[perm[dim]]
                ranges[perm[dim]] = (lo + min(start, hi - lo), lo + min(end, hi - lo))
            elif op in ("split", "split_with_sizes", "chunk"):
                dim = (step.args[2] if len(step.args) > 2 else 0) % len(perm)
                lo, hi = ranges[perm[dim]]
                n = hi - lo
                if op == "split_with_sizes":
                    sizes = list(step.args[1])
                elif op == "split":
                    sizes = [min(step.args[1], n - i) for i in range(0, n, step.args[1])]
                else:
                    each = -(-n // step.args[1])
                    sizes = [min(each, n - i) for i in range(0, n, each)]
                pending_split = (dim, lo, sizes)
            elif op == "getitem":
                if pending_split is None:
                    return None
                dim, lo, sizes = pending_split
                i = step.args[1]
                start = lo + sum(sizes[:i])
                ranges[perm[dim]] = (start, start + sizes[i])
                pending_split = None
        return ParamView(node, fqn, perm, ranges)

    def param_uses(self, placeholder) -> list[tuple[object, ParamView]]:
        """Every op that reads a parameter, through the views `param_view` follows, with the part it reads."""
        uses, stack = [], [placeholder]
        while stack:
            node = stack.pop()
            for user in node.users:
                if user.op == "call_function" and _op(user) in _PARAM_VIEWS and user.args[0] is node:
                    stack.append(user)
                else:
                    uses.append((user, self.param_view(node)))
        return uses


# ---- the residual stream: what writes it (to be centred) and what reads it -----------------------------------

@dataclass
class _Writer:
    kind: str  # linear | conv | embedding | table | input
    node: object
    weight: ParamView | None = None
    bias: ParamView | None = None
    odim: int = 0  # the weight's param dim that indexes output features (for a table: its feature dim)


class _Stream:
    """The walk back from every LayerNorm's input to what wrote it, proving each write can be made zero-mean."""

    def __init__(self, g: _Graph):
        self.g = g
        self.visited: dict[object, int] = {}  # node -> its feature dim: the values made zero-mean
        self.writers: list[_Writer] = []

    def refuse(self, node, why: str):
        raise NotConvertible(f"{_where(node)}: {why}")

    def centre(self, start, fd: int, norm_path: str) -> None:
        stack = [(start, fd)]
        while stack:
            node, fd = stack.pop()
            if node in self.visited:
                if self.visited[node] != fd:
                    self.refuse(node, "reaches the residual stream along two different feature dimensions")
                continue
            self.visited[node] = fd
            stack += self._step(node, fd, norm_path)

    def _step(self, node, fd: int, norm_path: str) -> list[tuple[object, int]]:
        g, op = self.g, _op(node)
        out_shape = _shape(node)
        if node.op == "placeholder":
            fqn = g.fqn(node)
            if fqn is not None:
                self.writers.append(_Writer("table", node, odim=fd))
                return []
            if node.name in g.user_inputs:
                if not node.meta["val"].is_floating_point():
                    self.refuse(node, f"model input {node.name} feeds the residual stream and is not float")
                self.writers.append(_Writer("input", node, odim=fd))
                return []
            self.refuse(node, f"a constant tensor ({node.name}) is written into the residual stream")
        if op in _IDENTITY or op in _VIEWS or op in _MOVES:
            j = _dim_back(node, fd)
            if j is None:
                self.refuse(node, f"{op} mixes or cuts the feature dimension of the residual stream")
            return [(node.args[0], j)]
        if op in ("add", "sub"):
            parts = []
            for operand in node.args[:2]:
                if not isinstance(operand, torch.fx.Node):
                    self.refuse(node, f"{op} of a constant ({operand}) into the residual stream: not zero-mean")
                shape = _shape(operand)
                j = fd - (len(out_shape) - len(shape))
                if j < 0 or shape[j] != out_shape[fd]:
                    self.refuse(node, f"{op} of a value broadcast across the features into the residual stream")
                parts.append((operand, j))
            return parts
        if op in ("mul", "div") or op == "neg":
            # a scale that is the same for every feature (a scalar, a per-token mask) keeps a zero mean
            def varies(a):
                j = fd - (len(out_shape) - len(_shape(a)))
                return j >= 0 and _shape(a)[j] > 1
            tensors = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
            stream = [a for a in tensors if varies(a)]
            if op == "div" and node.args[0] not in stream:
                self.refuse(node, "divides by a value that differs across the features of the residual stream")
            if len(stream) != 1:
                self.refuse(node, f"{op} by a value that differs across the features of the residual stream")
            j = fd - (len(out_shape) - len(_shape(stream[0])))
            return [(stream[0], j)]
        if op == "cat":
            dim = (node.args[1] if len(node.args) > 1 else 0) % len(out_shape)
            if dim == fd:
                self.refuse(node, "concatenates along the feature dimension of the residual stream")
            return [(t, fd) for t in node.args[0]]
        if op in _LINEARS:
            if fd != len(out_shape) - 1:
                self.refuse(node, f"{op}'s output features are not the stream's feature dimension")
            x, w, b = (node.args[1], node.args[2], node.args[0]) if op == "addmm" else (
                node.args[0], node.args[1], node.args[2] if len(node.args) > 2 else None)
            weight = g.param_view(w)
            bias = g.param_view(b) if isinstance(b, torch.fx.Node) else None
            if weight is None or len(weight.perm) != 2 or (b is not None and bias is None):
                self.refuse(node, f"{op} writes into the residual stream with a weight that is not a parameter")
            odim = weight.perm[0] if op == "linear" else weight.perm[1]
            self.writers.append(_Writer("linear", node, weight, bias, odim))
            return []
        if op in ("conv1d", "conv2d", "conv3d", "convolution"):
            weight = g.param_view(node.args[1])
            b = node.args[2] if len(node.args) > 2 else None
            bias = g.param_view(b) if isinstance(b, torch.fx.Node) else None
            if fd != 1 or weight is None or (b is not None and bias is None):
                self.refuse(node, "a convolution writes into the residual stream other than by its channels")
            self.writers.append(_Writer("conv", node, weight, bias, weight.perm[0]))
            return []
        if op == "embedding":
            weight = g.param_view(node.args[0])
            if weight is None or fd != len(out_shape) - 1:
                self.refuse(node, "an embedding writes into the residual stream from a table that is not a parameter")
            self.writers.append(_Writer("embedding", node, weight, odim=weight.perm[1]))
            return []
        if op == "layer_norm":
            self.refuse(node, f"its output is the residual stream itself, read by {norm_path} (post-LN: the norm "
                        "follows the residual add), so the stream is not zero-mean and LayerNorm is not RMSNorm there")
        what = "" if node.op != "call_function" else f" ({op})"
        self.refuse(node, f"writes into the residual stream{what} feeding {norm_path}: only linear, conv, embedding "
                    "and parameter or buffer writes can be centred (a post-LN block or a nonlinearity after the "
                    "branch's last linear is not)")


def _reads(g: _Graph, node, fd: int):
    """Every op that reads `node` through views that keep its feature dim `fd`: (reader, its feature dim) pairs, a
    None feature dim where a view lost it."""
    out, stack = [], [(node, fd)]
    while stack:
        n, d = stack.pop()
        for user in n.users:
            op = _op(user)
            if (op in _IDENTITY or op in _VIEWS or op in _MOVES) and user.args[0] is n:
                k = _dim_forward(user, d)
                if k is not None:
                    stack.append((user, k))
                    continue
                out.append((user, None))
            else:
                out.append((user, d))
    return out


# ---- the conversion ------------------------------------------------------------------------------------------

@dataclass
class _Fold:
    node: object  # the linear-like op
    weight: ParamView
    cdim: int  # the weight's param dim that is contracted with the norm's output
    odim: int  # the weight's param dim that indexes outputs
    bias: ParamView | None


def _norm_modules(g: _Graph, model: nn.Module):
    """layer_norm nodes grouped by their module, each checked to read the zero-mean stream."""
    groups: dict[str, list] = {}
    for node in g.graph.nodes:
        if _op(node) != "layer_norm":
            continue
        path = _where(node)
        module = model.get_submodule(path) if path != "(model)" else model
        if not isinstance(module, (nn.LayerNorm, OurLayerNorm)):
            raise NotConvertible(f"{path}: calls layer_norm itself ({type(module).__name__}); only LayerNorm "
                                 "modules can be replaced")
        if len(node.args[1]) != 1:
            raise NotConvertible(f"{path}: normalises over {list(node.args[1])}; only norms over the last "
                                 "dimension equal RMSNorm")
        groups.setdefault(path, []).append(node)
    return groups


def _check_stream_readers(g: _Graph, stream: _Stream, norm_nodes: set) -> None:
    """Everything that reads a value made zero-mean must not see the change: the stream's own ops and LayerNorms
    over the feature dimension only."""
    for node, fd in stream.visited.items():
        if node.op == "placeholder" and g.fqn(node) is not None:
            for user, _ in g.param_uses(node):
                if user not in stream.visited:
                    stream.refuse(user, f"reads {g.fqn(node)}, which feeds the residual stream and is centred")
            continue
        for user, d in _reads(g, node, fd):
            if user in stream.visited:
                continue
            if user in norm_nodes and d == len(_shape(user)) - 1:
                continue
            end = _past_the_norms(user, norm_nodes)
            if end.op == "output":
                stream.refuse(node, "the residual stream leaves the model without a LayerNorm: centring it would "
                              "change the output")
            stream.refuse(end, f"reads the residual stream ({_op(end)}) and is not a LayerNorm over its features: "
                          "centring the stream would change it")


_CARRIES = _IDENTITY | _VIEWS | _MOVES | {"add", "sub", "mul", "div", "neg", "cat"}


def _past_the_norms(user, norm_nodes: set):
    """Where a stream value read by no LayerNorm ends up: the first op past the ops that carry the stream on (a
    residual add after the last norm), or the model's output."""
    seen, stack = set(), [user]
    while stack:
        node = stack.pop()
        if node in seen or node in norm_nodes:
            continue
        seen.add(node)
        if node.op == "output" or _op(node) not in _CARRIES:
            return node
        stack += list(node.users)
    return user


def _plan_folds(g: _Graph, nodes: list) -> tuple[list[_Fold] | None, str]:
    """The linears that read a norm's outputs, or None and why the norm keeps its gain and bias."""
    folds = []
    for ln in nodes:
        for user, d in _reads(g, ln, len(_shape(ln)) - 1):
            op = _op(user)
            if op not in _LINEARS or d is None or d != len(_shape(user.args[1 if op == "addmm" else 0])) - 1:
                what = "the model's output" if user.op == "output" else f"{op} in {_where(user)}"
                return None, f"its output is read by {what}, not a linear"
            x, w, b = (user.args[1], user.args[2], user.args[0]) if op == "addmm" else (
                user.args[0], user.args[1], user.args[2] if len(user.args) > 2 else None)
            weight = g.param_view(w) if isinstance(w, torch.fx.Node) else None
            if weight is None or len(weight.perm) != 2 or (op == "matmul" and len(_shape(w)) != 2):
                return None, f"{_where(user)} reads it with a weight that is not a parameter"
            bias = g.param_view(b) if isinstance(b, torch.fx.Node) else None
            if b is not None and bias is None:
                return None, f"{_where(user)} reads it with a bias that is not a parameter"
            cdim, odim = (weight.perm[1], weight.perm[0]) if op == "linear" else (weight.perm[0], weight.perm[1])
            folds.append(_Fold(user, weight, cdim, odim, bias))
    readers = {f.node for f in folds}
    for f in folds:
        lo, hi = f.weight.ranges[f.odim]
        if f.weight.ranges[f.cdim] != (0, _shape(f.weight.node)[f.cdim]):
            return None, f"{_where(f.node)} reads it with part of a weight's inputs"
        for view in (f.weight, f.bias):
            if view is None:
                continue
            for user, seen in g.param_uses(view.node):
                if user in readers:
                    continue
                other = seen.ranges[f.odim if view is f.weight else 0] if seen is not None else (lo, hi)
                mine = (lo, hi) if view is f.weight else view.ranges[0]
                if other[0] < mine[1] and mine[0] < other[1]:
                    return None, (f"{view.fqn} is also read by {_where(user)} ({_op(user)}; a tied weight), "
                                  "so the norm's gain cannot go into it")
    return folds, ""


def _bias_home(model: nn.Module, f: _Fold) -> tuple[nn.Module, str, int] | None:
    """Where a linear with no bias can be given one: (module, attribute, length)."""
    path, _, name = f.weight.fqn.rpartition(".")
    owner = model.get_submodule(path) if path else model
    if isinstance(owner, nn.Linear) and name == "weight" and owner.bias is None and _op(f.node) == "linear":
        return owner, "bias", owner.out_features
    if isinstance(owner, nn.MultiheadAttention) and name == "in_proj_weight" and owner.in_proj_bias is None:
        return owner, "in_proj_bias", 3 * owner.embed_dim
    return None


def _tensor(model: nn.Module, fqn: str) -> torch.Tensor:
    path, _, name = fqn.rpartition(".")
    return getattr(model.get_submodule(path) if path else model, name)


def _centre_(t: torch.Tensor, dim: int) -> None:
    with torch.no_grad():
        wide = t.double()
        t.copy_(wide - wide.mean(dim, keepdim=True))


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """`old` replaced by `new` at every path it sits at (a module shared between two parents too)."""
    for path, module in list(model.named_modules(remove_duplicate=False)):
        if module is old and path:
            replace_at(model, path, new)


def _random_like(inputs: tuple, seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
                 if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs)


_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _eval_outputs(model: nn.Module, batch: tuple) -> list:
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            return [t for t in torch.utils._pytree.tree_leaves(model(*batch))
                    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    finally:
        for m, training in modes:
            m.training = training


def _max_diff(want: list, got: list) -> float:
    """Over the elements where `want` is finite (an inf or nan there must be one in `got` too)."""
    worst = 0.0
    for a, b in zip(want, got, strict=True):
        a, b = a.double(), b.double()
        finite = a.isfinite()
        if not torch.equal(a[~finite].nan_to_num(), b[~finite].nan_to_num()):
            return math.inf
        if finite.any():
            worst = max(worst, (a[finite] - b[finite]).abs().max().item())
    return worst


def _compare(original: nn.Module, converted: nn.Module, inputs: tuple, atol: float | None, report) -> bool:
    """The two models' outputs in evaluation mode on a random batch, their max |difference| and the tolerance
    recorded in the report: whether it is within. Over it, the original itself may be the inexact one (LayerNorm
    subtracts a stream's large mean, cancelling digits, which the centred stream does not): both are then measured
    against the original run in float64, and the conversion passes where it is no further from that than the
    original is (the report records both)."""
    batch = _random_like(inputs)
    want, got = _eval_outputs(original, batch), _eval_outputs(converted, batch)
    if not want:
        return True
    report.max_abs_diff = _max_diff(want, got)
    scale = max(1.0, *(a.double()[a.isfinite()].abs().max().item() if a.isfinite().any() else 0.0 for a in want))
    report.tolerance = atol if atol is not None else scale * max(_TOLERANCE.get(a.dtype, 1e-5) for a in want)
    if report.max_abs_diff <= report.tolerance or all(a.dtype == torch.float64 for a in want):
        return report.max_abs_diff <= report.tolerance
    wide = copy.deepcopy(original).double()
    exact = _eval_outputs(wide, tuple(x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                                      for x in batch))
    report.original_error, report.converted_error = _max_diff(exact, want), _max_diff(exact, got)
    return report.converted_error <= max(report.tolerance, report.original_error)


def convert_exact(model: nn.Module, example_inputs, *, to: str = "rmsnorm", check: bool = True,
                  atol: float | None = None, inplace: bool = False) -> tuple[nn.Module, ConvertReport]:
    """Every LayerNorm of a pre-LN `model` replaced by an RMSNorm (this library's, eps inside the root as
    LayerNorm's) with the model's function unchanged: the residual stream's writes centred, each norm's gain and
    bias folded into the linears that read it (see the module's docstring). `example_inputs` (a tuple of positional
    inputs) is what `torch.export` traces with. With `check`, the original and the converted model run a random
    batch of the same shapes (integer inputs kept) in evaluation mode and a difference over the dtype's tolerance
    (relative to the output's scale; `atol` sets it) raises. Returns the model (a copy unless `inplace`) and a
    `ConvertReport`; refuses with `NotConvertible` whatever it cannot prove exact."""
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    first_norm = next((p for p, m in model.named_modules() if isinstance(m, (nn.LayerNorm, OurLayerNorm))), None)
    if to != "rmsnorm":
        why = ("pRMSNorm's statistic comes from the first k features only, so it cannot equal LayerNorm's"
               if to == "prmsnorm" else "only RMSNorm equals LayerNorm on a zero-mean stream")
        raise NotConvertible(f"{first_norm or '(model)'}: to={to!r}: {why}")
    if first_norm is None:
        raise NotConvertible("(model): has no LayerNorm to convert")
    reference = model
    if not inplace:
        model = copy.deepcopy(model)
    elif check:
        reference = copy.deepcopy(model)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        try:
            ep = torch.export.export(model, example_inputs)
        except Exception as exc:  # noqa: BLE001 - any tracing failure is a refusal, with torch's first line
            raise NotConvertible(f"(model): torch.export cannot trace it: {str(exc).strip().splitlines()[0]}") from exc
    finally:
        for m, training in modes:
            m.training = training
    g = _Graph(ep)
    stream = _Stream(g)
    groups = _norm_modules(g, model)
    for path, nodes in groups.items():
        for node in nodes:
            stream.centre(node.args[0], len(_shape(node)) - 1, path)
    _check_stream_readers(g, stream, {n for nodes in groups.values() for n in nodes})

    centred, added, converted = [], [], []
    # the folds first (from the weights as they were), then the centring (which commutes with them)
    plans = {path: _plan_folds(g, nodes) for path, nodes in groups.items()}
    for path, (folds, why) in plans.items():
        old = model.get_submodule(path)
        gain, shift = old.weight, old.bias
        if folds is not None and shift is not None:  # the bias goes with the gain, or both stay on the norm
            homeless = [f for f in folds if f.bias is None and _bias_home(model, f) is None]
            if homeless:
                folds, why = None, f"{homeless[0].weight.fqn} is read with no bias to take the norm's bias"
        fold_bias = folds is not None and shift is not None
        entry = Converted(path, type(old).__name__, "", float(old.eps))
        if folds is not None and (gain is not None or shift is not None):
            done = set()
            for f in folds:
                key = (f.weight.fqn, *f.weight.ranges[f.odim])
                if key in done:
                    continue
                done.add(key)
                _fold_(model, f, gain, shift if fold_bias else None, added)
                entry.folded_into.append(f.weight.fqn if f.weight.ranges[f.odim] == (0, _shape(f.weight.node)[f.odim])
                                         else f"{f.weight.fqn}[{key[1]}:{key[2]}]")
        keep_gain = gain is not None and folds is None
        keep_bias = shift is not None and not fold_bias
        new = build_norm(to, int(old.normalized_shape[0]) if isinstance(old, nn.LayerNorm) else old.num_features,
                         eps=float(old.eps), affine=keep_gain, bias=keep_bias)
        if isinstance(old, AffineNorm) and isinstance(new, AffineNorm):
            new.impl = old.impl
        ref = gain if gain is not None else shift
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if keep_gain:
                new.weight.copy_(gain)
            if keep_bias:
                new.bias.copy_(shift)
        entry.kept = [n for n, k in (("weight", keep_gain), ("bias", keep_bias)) if k]
        entry.why_kept = why if entry.kept else ""
        entry.dropped = [n for n, t in (("weight", gain), ("bias", shift)) if t is not None and n not in entry.kept]
        entry.target = type(new).__name__
        new.train(old.training)
        _replace(model, old, new)
        converted.append(entry)
    centred += _centre_writers(model, g, stream)
    report = ConvertReport(to, converted, centred, added, fast_paths_off(model))
    if check and not _compare(reference, model, example_inputs, atol, report):
        raise NotConvertible(f"(model): the converted model differs from the original by {report.max_abs_diff:.3g} "
                             f"(tolerance {report.tolerance:.3g}); please report it")
    return model, report


def _fold_(model: nn.Module, f: _Fold, gain: torch.Tensor | None, shift: torch.Tensor | None, added: list) -> None:
    """W' = W diag(g) over the contracted dim, b' = b + W b_ln, on the rows this linear reads."""
    weight = _tensor(model, f.weight.fqn)
    lo, hi = f.weight.ranges[f.odim]
    with torch.no_grad():
        part = weight.narrow(f.odim, lo, hi - lo)
        wide = part.double()
        if shift is not None:
            moved = (wide @ shift.double()) if f.cdim == 1 else (shift.double() @ wide)
            if f.bias is not None:
                b = _tensor(model, f.bias.fqn)
                blo, bhi = f.bias.ranges[0]
                b.narrow(0, blo, bhi - blo).add_(moved.to(b.dtype))
            else:
                owner, name, length = _bias_home(model, f)
                new = torch.zeros(length, dtype=weight.dtype, device=weight.device)
                new[lo:hi] = moved.to(weight.dtype)
                setattr(owner, name, nn.Parameter(new))
                path = f.weight.fqn.rpartition(".")[0]
                added.append(f"{path}.{name}" if path else name)
                f.bias = ParamView(None, added[-1], [0], {0: (0, length)})
        if gain is not None:
            shape = [1, 1]
            shape[f.cdim] = -1
            part.copy_(wide * gain.double().view(shape))


def _centre_writers(model: nn.Module, g: _Graph, stream: _Stream) -> list[Centred]:
    """Every write into the stream made zero-mean across the features, in place; a table read elsewhere centred as it
    is read; the model inputs that feed the stream centred on entry."""
    done, notes, entry_inputs = set(), [], []
    for w in stream.writers:
        if w.kind == "input":
            names = list(inspect.signature(model.forward).parameters)
            position = g.user_inputs.index(w.node.name)
            entry_inputs.append((position, names[position] if position < len(names) else w.node.name, w.odim))
            notes.append(Centred(f"input {w.node.name}",
                                 f"centred on entry (forward pre-hook on the model, dim {w.odim})"))
            continue
        if w.kind == "table":
            fqn = g.fqn(w.node)
            if fqn not in done:
                done.add(fqn)
                _centre_(_tensor(model, fqn), w.odim)
                notes.append(Centred(fqn, f"centred along dim {w.odim}"))
            continue
        if w.kind == "embedding":
            fqn = w.weight.fqn
            others = [u for u, _ in g.param_uses(w.weight.node) if _op(u) != "embedding" or u not in stream.visited]
            if not others:
                if fqn not in done:
                    done.add(fqn)
                    _centre_(_tensor(model, fqn), w.odim)
                    notes.append(Centred(fqn, "each row centred"))
                continue
            path = _where(w.node)
            module = model.get_submodule(path) if path != "(model)" else model
            if type(module) is not nn.Embedding or module.max_norm is not None:
                stream.refuse(w.node, f"{fqn} is also read by {_where(others[0])}, so its rows cannot be centred in "
                              "place, and this is not an nn.Embedding that can centre as it reads")
            if path not in done:
                done.add(path)
                new = CentredEmbedding(module.num_embeddings, module.embedding_dim, padding_idx=module.padding_idx,
                                       scale_grad_by_freq=module.scale_grad_by_freq, sparse=module.sparse,
                                       device="meta")
                new.weight = module.weight  # the same parameter: what ties it to the head stays tied
                new.train(module.training)
                _replace(model, module, new)
                notes.append(Centred(path, f"CentredEmbedding: rows centred as they are read ({fqn} is also read by "
                                     f"{_where(others[0])}: a tied head)"))
            continue
        # a linear or conv: its weight's rows (over the output features) and its bias
        for view, dim in ((w.weight, w.odim), (w.bias, 0)):
            if view is None:
                continue
            others = [u for u, _ in g.param_uses(view.node) if u not in stream.visited]
            if others:
                stream.refuse(others[0], f"reads {view.fqn}, which writes into the residual stream and is centred")
            if view.ranges[dim] != (0, _shape(view.node)[dim]):
                stream.refuse(w.node, f"writes into the residual stream with part of {view.fqn}")
            if view.fqn not in done:
                done.add(view.fqn)
                _centre_(_tensor(model, view.fqn), dim)
        notes.append(Centred(_where(w.node), f"{w.kind} output centred: {w.weight.fqn} rows"
                             + (f" and {w.bias.fqn}" if w.bias is not None else "")))
    if entry_inputs:
        model.register_forward_pre_hook(CentreOnEntry(entry_inputs), with_kwargs=True)
    return notes
