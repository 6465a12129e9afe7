"""Python cost of one call through a `torch.library` custom op with registered autograd against a
torch.autograd.Function, on a tiny CPU tensor (so the op's work is nothing): python scripts/op_overhead.py

Why the Triton kernels' eager path is an autograd.Function: a recurrent step calls a norm per gate block per
time step, and this overhead is paid on every call. Interleaved rounds, median and range printed.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.library import custom_op


@custom_op("rmsnorm_overhead::identity", mutates_args=())
def _identity_op(x: torch.Tensor, w: torch.Tensor, k: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return x.clone(), x.new_empty(x.shape[0])


@_identity_op.register_fake
def _(x, w, k, eps):
    return torch.empty_like(x), x.new_empty(x.shape[0])


_identity_op.register_autograd(lambda ctx, dy, dr: (dy, None, None, None),
                               setup_context=lambda ctx, inputs, output: None)


class _Identity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, k, eps):
        return x.clone()

    @staticmethod
    def backward(ctx, dy):
        return dy, None, None, None


def main(rounds: int = 15, calls: int = 2000) -> None:
    x, w = torch.randn(4, 8, requires_grad=True), torch.randn(8)
    variants = {"torch.library custom op + autograd": lambda: _identity_op(x, w, 3, 1e-6)[0],
                "torch.autograd.Function": lambda: _Identity.apply(x, w, 3, 1e-6),
                "x.clone() alone": lambda: x.clone()}
    times = {name: [] for name in variants}
    for fn in variants.values():
        for _ in range(200):
            fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    print(f"torch {torch.__version__}, {rounds} interleaved rounds of {calls} calls, forward with autograd on:")
    for name, ts in times.items():
        print(f"  {name:38s} median {statistics.median(ts):6.1f} us per call  (range {min(ts):.1f}-{max(ts):.1f})")


if __name__ == "__main__":
    main()
