"""`BlockNorm`: one norm per consecutive column block of the last dimension, each with its own statistic and
gain, for a recurrent cell's hidden-side norms on one matmul output (GRU: [U_r; U_u] h and U_x h; any
number of blocks). Where every block is a gain-only RMS-family norm, all blocks run as one fused kernel call:
per-step calls, not arithmetic, set a small cell's norm cost. The plan is worked out once, at construction."""

from __future__ import annotations

import torch
from torch import nn

from rmsnorm.kernels import dispatch
from rmsnorm.spec import NormSpec


class BlockNorm(nn.Module):
    def __init__(self, spec: NormSpec, sizes: list[int] | tuple[int, ...]):
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.norms = nn.ModuleList(spec.build(s) for s in self.sizes)
        stats = [getattr(n, "row_stat", lambda: None)() for n in self.norms]
        same_eps = len({getattr(n, "eps", None) for n in self.norms}) == 1
        self._fused = None
        # spec.build set each norm's impl: only the fused impl may take the fused block kernel
        fused_impl = all(getattr(n, "impl", "fused") == "fused" for n in self.norms)
        if all(s is not None for s in stats) and same_eps and fused_impl:
            self._fused = ([k for k, _ in stats], [inv for _, inv in stats], self.norms[0].eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The normalised blocks of x, in order."""
        if self._fused is not None:
            ks, inv_ns, eps = self._fused
            y = dispatch.block_row_norm(x, [n.weight for n in self.norms], ks, inv_ns, eps)
            if y is not None:
                return y.split(self.sizes, dim=-1)
        # split, not slicing: a slice's backward zero-fills the whole parent once per use
        return tuple(norm(part) for norm, part in zip(self.norms, x.split(self.sizes, dim=-1), strict=True))

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, fused={'yes' if self._fused is not None else 'no'}"
