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

# the row norms and the recurrent layers (recurrent_cpu.cpp) in one module
_SOURCES = [Path(__file__).with_name("csrc") / name for name in ("rms_norm_cpu.cpp", "recurrent_cpu.cpp")]
# included by both: part of the build's identity as much as the sources
_HEADERS = [Path(__file__).with_name("csrc") / name for name in ("row_sums.h", "recurrent_cpu.h")]
# -fopenmp, not just -fopenmp-simd: at::parallel_for is inlined from torch's headers as an OpenMP region,
# so without it the kernel runs on one thread whatever torch.get_num_threads() says (same libgomp as torch)
_CFLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast"]
_LDFLAGS = ["-fopenmp"]
_lock = threading.Lock()
_module = None
_failed = False


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return next((line for line in text.splitlines() if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def build_dir(sources_at: Path | None = None) -> Path:
    """One cache per torch version, CPU feature set (the build uses -march=native) and checkout: torch's build
    file names the sources by their path, so two checkouts sharing one cache would each rebuild it whenever the
    other had used it last (seen: a demo that recompiled for 23 s in both lanes after another checkout ran)."""
    sources = b"".join(path.read_bytes() for path in _SOURCES + _HEADERS)
    where = (sources_at or _SOURCES[0].parent).resolve()
    identity = f"{torch.__version__}|{_cpu_flags()}|{_CFLAGS}|{sources!r}|{where}"
    key = hashlib.sha1(identity.encode()).hexdigest()[:12]
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
                    sources=[str(path) for path in _SOURCES],
                    build_directory=str(directory),
                    extra_cflags=_CFLAGS,
                    extra_ldflags=_LDFLAGS,
                    verbose=verbose,
                )
                _tune_parallel_grain(_module)
            except Exception as exc:  # no compiler, no ninja, an unusual platform: stay correct, get slower
                _failed = True
                warnings.warn(fallback_message(exc), RuntimeWarning, stacklevel=3)
    return _module


def missing_tools() -> list[str]:
    """What torch's extension build needs and this machine lacks, as what to install."""
    import shutil

    missing = []
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        missing.append("a C++ compiler (Debian/Ubuntu: apt-get install g++)")
    if shutil.which("ninja") is None:
        try:
            import ninja  # noqa: F401  (the PyPI package puts the binary beside the interpreter)
        except ImportError:
            missing.append("ninja (pip install ninja)")
    return missing


def fallback_message(exc: BaseException) -> str:
    """One line: that the fused kernel is off, why, and what to install to get it."""
    missing = missing_tools()
    reason = f"install {' and '.join(missing)}" if missing else (
        f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}; "
        "`python -m rmsnorm.kernels.build --verbose` shows the compiler output")
    return (f"rmsnorm: the fused CPU kernel could not be built, so the norms run the reference path (correct, "
            f"several times slower): {reason}")


def _tune_parallel_grain(module) -> int:
    """Measures, once per process, from how many elements per thread a second thread pays for itself on this
    machine (forward at 256 features, serial against parallel, interleaved, the best of several runs) and sets
    it in the kernel. RMSNORM_PARALLEL_GRAIN=<elements> sets it without measuring."""
    import time

    if os.environ.get("RMSNORM_PARALLEL_GRAIN"):
        grain = int(os.environ["RMSNORM_PARALLEL_GRAIN"])
    elif torch.get_num_threads() < 2:
        grain = 1 << 30
    else:
        grain = 1 << 20  # no size tried wins in parallel: only very large inputs go parallel
        d = 256
        with torch.no_grad():  # the first parallel region starts the thread pool: not part of any timing
            module.set_parallel_grain(1)
            module.row_norm(torch.ones(64, d), None, None, d, 1.0 / d, 1e-8)
        # a generator of its own: the first use happens inside a seeded run, whose random stream must not move
        generator = torch.Generator().manual_seed(0)
        for elements in (4096, 8192, 16384, 32768, 65536, 131072, 262144):
            x = torch.randn(elements // d, d, generator=generator)
            w = torch.ones(d)
            times = {1: [], 1 << 30: []}
            with torch.no_grad():
                for _ in range(15):
                    for candidate, spent in times.items():
                        module.set_parallel_grain(candidate)
                        start = time.perf_counter()
                        module.row_norm(x, w, None, d, 1.0 / d, 1e-8)
                        spent.append(time.perf_counter() - start)
            parallel, serial = (min(t) for t in times.values())
            if parallel < 0.9 * serial:
                grain = elements // 2  # per thread: the size at which two threads first win
                break
    module.set_parallel_grain(grain)
    return grain


def parallel_grain() -> int | None:
    """The elements per thread from which the kernel goes parallel in this process (None: not built)."""
    m = module()
    return None if m is None else m.parallel_grain()


def module():
    """The compiled module once built (the hot path: no lock, no lookup), else `load()`'s answer."""
    return _module or load()


def row_norm(x: torch.Tensor, weight, bias, eps: float, k: int, inv_n: float) -> torch.Tensor:
    """y = x * rsqrt(inv_n * sum(x[..., :k]^2) + eps) * w + b over the last dimension, with autograd."""
    return module().row_norm(x, weight, bias, k, inv_n, eps)
