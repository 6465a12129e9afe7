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


def enabled() -> bool:
    """False when RMSNORM_KERNELS=reference asks for the reference path everywhere."""
    return os.environ.get("RMSNORM_KERNELS", "auto") != "reference"


def _fused_row_norm(x, weight, bias, eps, k, inv_n):
    """The fused path's result for this tensor, or None where only the reference applies."""
    if not enabled() or x.numel() == 0:
        return None
    # the kernels take weight and bias in x's dtype; mixed dtypes (autocast, a half model) take the reference
    if weight is not None and weight.dtype != x.dtype or bias is not None and bias.dtype != x.dtype:
        return None
    if x.device.type == "cpu":
        if x.dtype not in _CPU_DTYPES:
            return None
        module = cpu._module or cpu.load()
        return None if module is None else module.row_norm(x, weight, bias, k, inv_n, eps)
    if x.is_cuda and x.dtype in _CUDA_DTYPES:
        from rmsnorm.kernels import triton_kernels

        return triton_kernels.row_norm(x, weight, bias, eps, k, inv_n) if triton_kernels.available() else None
    return None


def rms_norm(x: torch.Tensor, weight, bias, eps: float, k: int | None) -> torch.Tensor:
    k = x.shape[-1] if k is None else k
    y = _fused_row_norm(x, weight, bias, eps, k, 1.0 / k)
    return rms_norm_reference(x, weight, bias, eps, k) if y is None else y


def l2_norm(x: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    y = _fused_row_norm(x, weight, bias, eps, x.shape[-1], 1.0)
    return l2_norm_reference(x, weight, bias, eps) if y is None else y


def split_norm_plan(first: torch.nn.Module, second: torch.nn.Module) -> tuple[int, float, int, float] | None:
    """(k1, 1/n1, k2, 1/n2) when two norms can run as one fused `split_row_norm` call: both RMSNorm,
    PartialRMSNorm or L2Norm with a gain, no bias and the same eps. Worked out once per cell, not per step."""
    stats = [_rms_family_stat(m) for m in (first, second)]
    if None in stats or first.eps != second.eps:
        return None
    return (*stats[0], *stats[1])


def split_row_norm(x: torch.Tensor, first: torch.nn.Module, second: torch.nn.Module,
                   plan: tuple[int, float, int, float] | None) -> torch.Tensor | None:
    """Two norms over the column blocks [0, d1) and [d1, d) of x's rows in one fused call (the GRU's
    hidden-side norms), or None where only the separate norms apply."""
    if plan is None or x.device.type != "cpu" or x.dtype not in _CPU_DTYPES or x.dim() != 2 or not enabled():
        return None
    if first.weight.dtype != x.dtype or second.weight.dtype != x.dtype:
        return None
    module = cpu._module or cpu.load()
    if module is None:
        return None
    k1, inv1, k2, inv2 = plan
    return module.split_row_norm(x, first.weight, second.weight, k1, k2, inv1, inv2, first.eps)


def _rms_family_stat(module) -> tuple[int, float] | None:
    """(k, 1/n) of an RMSNorm, PartialRMSNorm or L2Norm with a gain and no bias; None for anything else."""
    from rmsnorm.norms import L2Norm, PartialRMSNorm, RMSNorm

    if type(module) not in (RMSNorm, PartialRMSNorm, L2Norm) or module.weight is None or module.bias is not None:
        return None
    d = module.num_features
    if isinstance(module, PartialRMSNorm):
        return module.k, 1.0 / module.k
    return (d, 1.0) if isinstance(module, L2Norm) else (d, 1.0 / d)
