"""Chooses how a norm is computed for a given tensor: the fastest correct path for its device and dtype.

- CUDA, float32/bfloat16/float16: the Triton kernels (`triton_kernels.py`), where Triton imports.
- CPU, float32/float64: the fused C++ kernel (`cpu.py`), built on first use and cached.
- Anything else (CPU half precision, mixed dtypes, a kernel that could not build): the reference in
  `rmsnorm.functional`, which the kernels are tested against.

`RMSNORM_KERNELS=reference` forces the reference everywhere (for debugging, and for benchmarks that compare).
This sits on every forward pass, so it keeps its checks few and its imports at module level.
"""

from __future__ import annotations

import os

import torch

from rmsnorm.functional import l2_norm_reference, rms_norm_reference
from rmsnorm.kernels import cpu

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _enabled() -> bool:
    return os.environ.get("RMSNORM_KERNELS", "auto") != "reference"


def _fused_row_norm(x, weight, bias, eps, k, inv_n):
    """The fused path's result for this tensor, or None where only the reference applies."""
    if x.dtype not in _CPU_DTYPES and x.dtype not in _CUDA_DTYPES or not _enabled() or x.numel() == 0:
        return None
    # the kernels take weight and bias in x's dtype; mixed dtypes (autocast, a half model) take the reference
    if weight is not None and weight.dtype != x.dtype or bias is not None and bias.dtype != x.dtype:
        return None
    if x.is_cuda:
        if x.dtype not in _CUDA_DTYPES:
            return None
        from rmsnorm.kernels import triton_kernels

        return triton_kernels.row_norm(x, weight, bias, eps, k, inv_n) if triton_kernels.available() else None
    if x.device.type == "cpu" and x.dtype in _CPU_DTYPES:
        module = cpu._module or cpu.load()
        return None if module is None else module.row_norm(x, weight, bias, k, inv_n, eps)
    return None


def rms_norm(x: torch.Tensor, weight, bias, eps: float, k: int | None) -> torch.Tensor:
    k = x.shape[-1] if k is None else k
    y = _fused_row_norm(x, weight, bias, eps, k, 1.0 / k)
    return rms_norm_reference(x, weight, bias, eps, k) if y is None else y


def l2_norm(x: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    y = _fused_row_norm(x, weight, bias, eps, x.shape[-1], 1.0)
    return l2_norm_reference(x, weight, bias, eps) if y is None else y
