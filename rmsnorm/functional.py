"""Functional forms of the norms over the last dimension, each on the fastest correct path for its input
(`rmsnorm.kernels.dispatch`), with the exact references of `rmsnorm.reference` beside them. `impl` chooses how:
'fused' (the default: the dispatch), 'composite' (the chain of tensor ops the paper's frameworks ran:
`rmsnorm.composite`), 'torch' (`F.layer_norm` / `F.rms_norm` where torch has the norm, else composite)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmsnorm import composite
from rmsnorm.kernels import dispatch
from rmsnorm.reference import (  # noqa: F401 - part of the functional API
    DEFAULT_EPS,
    DEFAULT_P,
    NormConfigError,
    check_p,
    l2_norm_reference,
    partial_size,
    rms_norm_reference,
)

IMPLS = ("fused", "composite", "torch")


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise NormConfigError(f"norm.impl={impl} is not an implementation; use one of {', '.join(IMPLS)}")
    return impl


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
    k: int | None = None,
    impl: str = "fused",
) -> torch.Tensor:
    """RMSNorm (or pRMSNorm with `k`) over the last dimension."""
    if impl == "fused":
        return dispatch.rms_norm(x, weight, bias, eps, k)
    if impl == "torch" and (k is None or k == x.shape[-1]):
        y = F.rms_norm(x, x.shape[-1:], weight, eps)
        return y if bias is None else y + bias
    return composite.rms_norm(x, weight, bias, eps, k)


def l2_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
    impl: str = "fused",
) -> torch.Tensor:
    """x / ||x||_2 over the last dimension (torch has no such kernel: impl=torch is the composite)."""
    if impl == "fused":
        return dispatch.l2_norm(x, weight, bias, eps)
    return composite.l2_norm(x, weight, bias, eps)


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
    impl: str = "fused",
) -> torch.Tensor:
    """torch's fused LayerNorm over the last dimension (impl fused or torch), statistics in float32 for half
    inputs (CUDA's kernel keeps them in float32 itself; on the CPU the input is widened first); or the
    composite of Nematus and zero."""
    if impl == "composite":
        return composite.layer_norm(x, weight, bias, eps)
    if x.dtype in (torch.float16, torch.bfloat16) and not x.is_cuda:
        w = None if weight is None else weight.float()
        b = None if bias is None else bias.float()
        return F.layer_norm(x.float(), x.shape[-1:], w, b, eps).to(x.dtype)
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)
