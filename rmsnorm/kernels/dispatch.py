"""Chooses how a row norm is computed for a given tensor: the fastest correct path for its device and dtype.

- CUDA, float32/bfloat16/float16: the fastest of torch's fused `F.rms_norm`, our Triton kernels and the
  reference, measured at first use per norm, dtype and width (`cuda_paths.py`; `RMSNORM_CUDA_PATH` forces one).
- CPU, float32/float64: the fused C++ kernel (`cpu.py`), built on first use and cached.
- Anything else (CPU half precision, mixed dtypes, a kernel that could not build): the reference in
  `rmsnorm.reference`, which the kernels are tested against.

`RMSNORM_KERNELS=reference` in the environment at import, or `reference_only()` in code, forces the reference
everywhere (for debugging, and for benchmarks and tests that compare). Takes tensors and numbers only. The
choice per (device type, dtype) is made once and cached; what a call still checks is what can differ between
calls with the same dtype: the switch, the weights' dtype, an empty tensor.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch

from rmsnorm.kernels import cpu, cuda_paths
from rmsnorm.reference import l2_norm_reference, rms_norm_reference

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# read once: at one recurrent step's size, reading the environment on every call cost 2 us, a third of the
# kernel's own time
_enabled = os.environ.get("RMSNORM_KERNELS") != "reference"


def enabled() -> bool:
    """False when the reference path is forced everywhere (RMSNORM_KERNELS=reference, `reference_only()`)."""
    return _enabled


@contextlib.contextmanager
def reference_only(active: bool = True) -> Iterator[None]:
    """Within the block every norm takes the reference path (with `active=False`, the kernels again)."""
    global _enabled
    before, _enabled = _enabled, not active
    try:
        yield
    finally:
        _enabled = before


@functools.cache
def _kind(device_type: str, dtype: torch.dtype) -> str | None:
    """'cpu', 'cuda' or None (reference) for tensors of this device type and dtype."""
    if device_type == "cpu" and dtype in _CPU_DTYPES:
        return "cpu"
    if device_type == "cuda" and dtype in _CUDA_DTYPES:
        return "cuda"
    return None


def _same_dtype(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    return all(p is None or p.dtype == x.dtype for p in params)


def _fused_row_norm(x, weight, bias, eps, k, inv_n, norm):
    """The fused path's result for this tensor, or None where only the reference applies."""
    dtype = x.dtype
    if (weight is not None and weight.dtype is not dtype) or (bias is not None and bias.dtype is not dtype):
        return None  # the kernels take weight and bias in x's dtype; mixed dtypes (autocast) take the reference
    # x.is_cpu, not x.device.type: at one recurrent step's size the Python around the kernel costs as much as
    # the kernel, and building a device object is the dearest read here
    kind = _kind("cpu" if x.is_cpu else x.device.type, dtype)
    if kind is None or not _enabled or x.numel() == 0:
        return None
    if kind == "cpu":
        module = cpu.module()
        return None if module is None else module.row_norm(x, weight, bias, k, inv_n, eps)
    return cuda_paths.row_norm(norm, x, weight, bias, eps, k)


def rms_norm(x: torch.Tensor, weight, bias, eps: float, k: int | None) -> torch.Tensor:
    k = x.shape[-1] if k is None else k
    # the common case inline (CPU float32, gain of x's dtype, kernel built): a Python frame less per call
    module = cpu._module
    if (module is not None and _enabled and x.is_cpu and x.dtype is torch.float32 and bias is None
            and weight is not None and weight.dtype is torch.float32 and x.numel()):
        return module.row_norm(x, weight, None, k, 1.0 / k, eps)
    y = _fused_row_norm(x, weight, bias, eps, k, 1.0 / k, "rmsnorm" if k == x.shape[-1] else "prmsnorm")
    return rms_norm_reference(x, weight, bias, eps, k) if y is None else y


def l2_norm(x: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    y = _fused_row_norm(x, weight, bias, eps, x.shape[-1], 1.0, "l2norm")
    return l2_norm_reference(x, weight, bias, eps) if y is None else y


def block_row_norm(x: torch.Tensor, weights: list[torch.Tensor], ks: list[int], inv_ns: list[float],
                   eps: float) -> torch.Tensor | None:
    """Gain-only RMS-family norms over consecutive column blocks of x's rows (block i as wide as weights[i],
    its statistic inv_ns[i] * sum of its first ks[i] squares) in one fused call, or None where this path
    does not apply (then the caller runs each block's own norm)."""
    if x.dim() != 2 or not x.is_cpu or _kind("cpu", x.dtype) != "cpu" or not _enabled or not _same_dtype(x, *weights):
        return None
    module = cpu.module()
    return None if module is None else module.block_row_norm(x, weights, ks, inv_ns, eps)


def describe() -> dict:
    """Which paths this process's norms took, for a run's summary: the CPU kernel or the reference, and each
    CUDA choice (with the forced path, if any)."""
    cpu_path = ("reference" if not _enabled else "fused C++ kernel" if cpu._module is not None
                else "reference (the kernel could not be built)" if cpu._failed else "not used")
    out = {"cpu": cpu_path, "cuda": cuda_paths.choices()}
    if cuda_paths.forced_path() is not None:
        out["cuda_forced"] = cuda_paths.forced_path()
    if cuda_paths.skipped():
        out["cuda_skipped"] = cuda_paths.skipped()  # candidates that failed their first call, and why
    return out
