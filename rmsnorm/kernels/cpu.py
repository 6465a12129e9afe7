"""The fused CPU kernel (csrc/rms_norm_cpu.cpp, autograd included): built with torch's cpp_extension on
first use and cached. When it cannot build, one warning, and callers take the reference path."""

from __future__ import annotations

import hashlib
import os
import platform
import threading
import warnings
from pathlib import Path

import torch

_SOURCE = Path(__file__).with_name("csrc") / "rms_norm_cpu.cpp"
_lock = threading.Lock()
_module = None
_failed = False


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return next((line for line in text.splitlines() if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def build_dir() -> Path:
    """One cache per torch version and CPU feature set: the build uses -march=native."""
    key = hashlib.sha1(f"{torch.__version__}|{_cpu_flags()}|{_SOURCE.read_bytes()!r}".encode()).hexdigest()[:12]
    root = Path(os.environ.get("RMSNORM_KERNEL_CACHE", Path.home() / ".cache" / "rmsnorm-kernels"))
    return root / f"cpu-{platform.machine()}-{key}"


def load(verbose: bool = False):
    """The compiled module, or None (after one warning) where it cannot be built."""
    global _module, _failed
    if _module is not None or _failed:
        return _module
    with _lock:
        if _module is None and not _failed:
            try:
                from torch.utils.cpp_extension import load as load_extension

                directory = build_dir()
                directory.mkdir(parents=True, exist_ok=True)
                _module = load_extension(
                    name="rmsnorm_cpu",
                    sources=[str(_SOURCE)],
                    build_directory=str(directory),
                    extra_cflags=["-O3", "-march=native", "-fopenmp-simd", "-ffp-contract=fast"],
                    verbose=verbose,
                )
            except Exception as exc:  # no compiler, no ninja, an unusual platform: stay correct, get slower
                _failed = True
                warnings.warn(
                    f"rmsnorm: the fused CPU kernel could not be built ({type(exc).__name__}: {exc}); "
                    "using the reference implementation (correct, slower). `python -m rmsnorm.kernels.build "
                    "--verbose` shows the compiler output.",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _module


def module():
    """The compiled module once built (the hot path: no lock, no lookup), else `load()`'s answer."""
    return _module or load()


def row_norm(x: torch.Tensor, weight, bias, eps: float, k: int, inv_n: float) -> torch.Tensor:
    """y = x * rsqrt(inv_n * sum(x[..., :k]^2) + eps) * w + b over the last dimension, with autograd."""
    return module().row_norm(x, weight, bias, k, inv_n, eps)
