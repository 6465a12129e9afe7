"""Functional forms of the norms over the last dimension, each on the fastest correct path for its input
(`rmsnorm.kernels.dispatch`), with the exact references of `rmsnorm.reference` beside them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
    k: int | None = None,
) -> torch.Tensor:
    """RMSNorm (or pRMSNorm with `k`) over the last dimension."""
    return dispatch.rms_norm(x, weight, bias, eps, k)


def l2_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """x / ||x||_2 over the last dimension."""
    return dispatch.l2_norm(x, weight, bias, eps)


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """torch's fused LayerNorm over the last dimension, statistics in float32 for half inputs (CUDA's kernel
    keeps them in float32 itself; on the CPU the input is widened first)."""
    if x.dtype in (torch.float16, torch.bfloat16) and not x.is_cuda:
        w = None if weight is None else weight.float()
        b = None if bias is None else bias.float()
        return F.layer_norm(x.float(), x.shape[-1:], w, b, eps).to(x.dtype)
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)
