"""The paper's Table 1, measured: which re-scaling or re-centering of the weights or the data leaves a
normalised layer's output h = N(W x) unchanged (float64, a batch of cases, the norm's eps made negligible).

The transformations are those of Ba et al.'s Table 1, which the RMSNorm paper extends:
  weight matrix re-scaling    W -> 3 W
  weight matrix re-centering  W -> W + 1 gamma^T (every unit's weights shifted by the same vector)
  weight vector re-scaling    w_i -> delta_i w_i (each unit's weights by its own positive factor)
  dataset re-scaling          x -> 3 x for every case
  dataset re-centering        x -> x + gamma for every case
  single case re-scaling      x_n -> 3 x_n for one case only
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rmsnorm import build_norm, norm_names

Tensor = torch.Tensor
_G = torch.Generator().manual_seed(0)


def _single_case(w: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.clone()
    x[0] *= 3.0
    return w, x


TRANSFORMS: dict[str, Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] = {
    "weight matrix re-scaling": lambda w, x: (3.0 * w, x),
    "weight matrix re-centering": lambda w, x: (w + torch.randn(1, w.shape[1], generator=_G, dtype=w.dtype), x),
    "weight vector re-scaling": lambda w, x: (w * torch.rand(w.shape[0], 1, generator=_G, dtype=w.dtype).add(0.5), x),
    "dataset re-scaling": lambda w, x: (w, 3.0 * x),
    "dataset re-centering": lambda w, x: (w, x + torch.randn(1, x.shape[1], generator=_G, dtype=x.dtype)),
    "single case re-scaling": _single_case,
}

# the rows of the paper's Table 1, by registry name; every other registered norm follows them
PAPER_ROWS = ("batchnorm", "weightnorm", "layernorm", "rmsnorm", "prmsnorm")


def rows() -> list[str]:
    """Table 1's rows, then each other registered norm that acts on a layer's output (not the identity, not a
    variant that only adds projections): a norm registered in rmsnorm/ gets its row with no edit here."""
    others = [n for n in norm_names() if n not in PAPER_ROWS and n not in ("none", "bn_everywhere")]
    return [*PAPER_ROWS, *others]


def layer_output(norm: str, w: Tensor, x: Tensor) -> Tensor:
    """h = N(W x) for a batch of cases x (n, d_in); weight norm normalises each unit's weight vector instead."""
    a = x @ w.T
    if norm == "weightnorm":
        return a / w.norm(dim=1)
    module = build_norm(norm, w.shape[0], eps=1e-30, p=0.25).double().train()  # batchnorm: the batch's stats
    with torch.no_grad():
        return module(a)


def invariant(norm: str, transform: str, units: int = 16, inputs: int = 12, cases: int = 32) -> bool:
    """Whether N(W x) is unchanged by `transform`, on random weights and cases."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(units, inputs, generator=g, dtype=torch.float64)
    x = torch.randn(cases, inputs, generator=g, dtype=torch.float64)
    w2, x2 = TRANSFORMS[transform](w, x)
    return torch.allclose(layer_output(norm, w, x), layer_output(norm, w2, x2), rtol=1e-9, atol=1e-9)


def table() -> dict[str, dict[str, bool]]:
    return {norm: {t: invariant(norm, t) for t in TRANSFORMS} for norm in rows()}


def render(measured: dict[str, dict[str, bool]]) -> str:
    """Markdown, the paper's layout: a row per norm, a column per transformation."""
    cols = list(TRANSFORMS)
    lines = ["| norm | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for norm, row in measured.items():
        lines.append(f"| {norm} | " + " | ".join("invariant" if row[c] else "-" for c in cols) + " |")
    return "\n".join(lines)
