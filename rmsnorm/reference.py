"""The exact maths of every norm, which each fast path is tested against. A leaf: imports torch only.

eps placement: every norm here adds eps INSIDE the root, `x * rsqrt(mean(x^2) + eps)`, as the paper's
TensorFlow reference and `torch.nn.RMSNorm` do, so our RMSNorm coincides with torch's for the same eps.
All statistics are computed in float32 (or float64 for float64 inputs) and the result is returned in the
input dtype, so fp16/bf16 inputs neither overflow in x^2 nor lose the statistic to rounding.
"""

from __future__ import annotations

import functools

import torch

DEFAULT_EPS = 1e-8
DEFAULT_P = 0.0625


class NormConfigError(ValueError):
    """A norm was asked for with settings that cannot work (unknown name, p out of range, k < 1)."""


def check_p(p: float) -> float:
    if not 0.0 < p <= 1.0:
        raise NormConfigError(f"pRMSNorm needs 0 < p <= 1, got p={p}; p is the share of features used for the RMS")
    return float(p)


def partial_size(d: int, p: float) -> int:
    """Number of leading features pRMSNorm estimates the RMS from: `int(d * p)`, as the reference code does."""
    check_p(p)
    k = int(d * p)
    if k < 1:
        raise NormConfigError(
            f"pRMSNorm with p={p} on {d} features uses k=int({d}*{p})=0 features; choose p >= {1.0 / d:.4g}"
        )
    return k


# pRMSNorm on a conv map never estimates its RMS from fewer positions than this (a 6 x 6 map at p = 12.5% would
# give 4); and a vector shorter than it (CIFAR-10's 10 logits) takes its statistic over all its features
PARTIAL_MIN_FEATURES = 16


@functools.cache  # called on every forward of a map norm: build each lattice once (callers must not write to it)
def spread_positions(height: int, width: int, p: float, minimum: int = PARTIAL_MIN_FEATURES) -> torch.Tensor:
    """The positions of an H x W map (row-major indices) that pRMSNorm's map form takes its statistic from,
    the same for every channel: k = max(int(H*W*p), min(minimum, H*W)) of them on a diagonal lattice. Every
    (H*W/k)-th position in row-major order, centred, with each row's columns rotated by the row's index, so
    rows and columns are sampled alike (at p = 1/2 a checkerboard; without the rotation, W a multiple of the
    stride would give whole columns and miss thin vertical features). The first k positions would be the
    image's top rows: mostly background where objects are small and placed anywhere, a biased estimate of the
    whole map's RMS; an even spread estimates it without bias for objects placed anywhere."""
    check_p(p)
    d = height * width
    k = min(d, max(int(d * p), minimum))
    flat = ((torch.arange(k, dtype=torch.float64) + 0.5) * d / k).floor().long()
    row, col = flat // width, flat % width
    return row * width + (col + row) % width


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def affine(y: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """y * weight + bias, each optional, in y's dtype (broadcast over leading dimensions)."""
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y


def rms_norm_reference(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
    k: int | None = None,
) -> torch.Tensor:
    """RMSNorm over the last dimension; with `k`, the RMS comes from the first k features only (pRMSNorm)."""
    xf = x.to(compute_dtype(x))
    stat = xf if k is None or k == x.shape[-1] else xf[..., :k]
    y = xf * torch.rsqrt(stat.pow(2).mean(-1, keepdim=True) + eps)
    return affine(y, weight, bias).to(x.dtype)


def l2_norm_reference(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """x / ||x||_2 over the last dimension: RMSNorm without the sqrt(d) factor (the paper's Table 2 row)."""
    xf = x.to(compute_dtype(x))
    y = xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)
    return affine(y, weight, bias).to(x.dtype)
