"""Chooses how a norm is computed for a given tensor: the fastest correct path for its device and dtype.

- CUDA, float32/bfloat16/float16: the Triton kernels (`triton_kernels.py`), where Triton imports.
- CPU, float32/float64: the fused C++ kernel (`cpu.py`), built on first use and cached.
- Anything else (CPU half precision, a kernel that could not build): the reference in `rmsnorm.functional`,
  which the kernels are tested against.

`RMSNORM_KERNELS=reference` forces the reference everywhere (for debugging and for benchmarks that compare).
"""

from __future__ import annotations

import os

import torch

from rmsnorm.functional import l2_norm_reference, rms_norm_reference

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _enabled() -> bool:
    return os.environ.get("RMSNORM_KERNELS", "auto") != "reference"


def _fused_row_norm(x, weight, bias, eps, k, inv_n):
    """The fused path for this tensor, or None where only the reference applies."""
    # the kernels take x's dtype for weight and bias; mixed-dtype modules (autocast) take the reference
    if not _enabled() or x.numel() == 0:
        return None
    if x.device.type == "cpu" and x.dtype in _CPU_DTYPES:
        if weight is not None and weight.dtype != x.dtype or bias is not None and bias.dtype != x.dtype:
            return None
        from rmsnorm.kernels import cpu

        if cpu.load() is None:
            return None
        return cpu.row_norm(x, weight, bias, eps, k, inv_n)
    if x.device.type == "cuda" and x.dtype in _CUDA_DTYPES:
        from rmsnorm.kernels import triton_kernels

        if not triton_kernels.available():
            return None
        return triton_kernels.row_norm(x, weight, bias, eps, k, inv_n)
    return None


def rms_norm(x: torch.Tensor, weight, bias, eps: float, k: int | None) -> torch.Tensor:
    d = x.shape[-1]
    k = d if k is None else k
    y = _fused_row_norm(x, weight, bias, eps, k, 1.0 / k)
    return rms_norm_reference(x, weight, bias, eps, k) if y is None else y


def l2_norm(x: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    y = _fused_row_norm(x, weight, bias, eps, x.shape[-1], 1.0)
    return l2_norm_reference(x, weight, bias, eps) if y is None else y
