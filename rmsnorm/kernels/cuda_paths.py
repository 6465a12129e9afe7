"""On CUDA, which implementation computes a row norm: torch's fused `F.rms_norm` ('torch'), our Triton kernels
('ours') or the reference ('reference'). Tensors and numbers in, tensors out.

The candidates per norm:
- rmsnorm (k = d): torch, ours, reference;
- l2norm: torch (`x / sqrt(sum x^2 + eps)` is `rms_norm(x, weight / sqrt(d), eps / d)`), ours, reference;
- prmsnorm (k < d): ours, reference (torch has no partial statistic).
The choice is measured at first use for each (norm, dtype, width bucket, row-count bucket): forward+backward of
every candidate on a tensor of the call's shape (at most 16M elements), a few interleaved rounds timed with CUDA
events, the fastest kept for the process (the CPU kernel measures its parallel grain the same way). The probe
draws from a generator of its own, so a seeded run's random numbers do not move. `choices()` lists what was
chosen, for a run's summary. `RMSNORM_CUDA_PATH=torch|ours|reference` (or `forced(path)` in code) skips the
measurement; where the forced path is not a candidate for a norm, the first candidate in the order above is
taken. While torch.compile traces or a CUDA graph captures, nothing is measured: the first candidate is taken.

What can go wrong at first use is contained: the probe runs outside inference mode and autocast (a first call
under `torch.inference_mode()` measures as any other); a candidate that raises, or that does not support the
dtype on this device (Triton's bf16 before compute capability 8.0), is skipped and the reason kept
(`skipped()`); under torch.distributed with more than one process nothing is measured either, and every rank
takes the first usable candidate: a rule each rank computes alike, where measured choices could differ between
ranks and agreeing on them would need a collective that ranks meeting different shapes (ragged batches) could
deadlock on.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from rmsnorm.reference import NormConfigError, l2_norm_reference, rms_norm_reference

if torch.cuda.is_available():  # the Triton ops registered at import, never inside a torch.compile trace
    from rmsnorm.kernels import triton_kernels as _triton_kernels

    _triton_kernels.register_ops()

PATHS = ("torch", "ours", "reference")
CANDIDATES = {"rmsnorm": ("torch", "ours", "reference"), "l2norm": ("torch", "ours", "reference"),
              "prmsnorm": ("ours", "reference")}
FEW_ROWS = 1024  # calls with at most this many rows (a recurrent step) are chosen for apart from large ones
PROBE_ELEMENTS = 1 << 24
ENV = "RMSNORM_CUDA_PATH"


def _forced_from_env() -> str | None:
    value = os.environ.get(ENV, "").strip() or None
    if value is not None and value not in PATHS:
        raise NormConfigError(f"{ENV}={value!r} is not a path; use one of {', '.join(PATHS)} or leave it unset")
    return value


_forced: str | None = _forced_from_env()
_choices: dict[str, str] = {}  # readable key -> path, for summaries
_by_call: dict[tuple, str] = {}  # (norm, dtype, d, few rows) -> path: the per-call lookup, no string built


@contextlib.contextmanager
def forced(path: str | None) -> Iterator[None]:
    """Within the block every CUDA row norm takes `path` (None: the measured choice again)."""
    global _forced
    if path is not None and path not in PATHS:
        raise NormConfigError(f"no CUDA path {path!r}; one of {', '.join(PATHS)}")
    before, _forced = _forced, path
    try:
        yield
    finally:
        _forced = before


def forced_path() -> str | None:
    return _forced


def choices() -> dict[str, str]:
    """What was chosen so far in this process, key -> path (e.g. 'rmsnorm/bfloat16/d513-1024/rows>1024')."""
    return dict(_choices)


def clear() -> None:
    """Forget every choice (tests, and benchmarks that measure the choice itself)."""
    _skipped.clear()
    _choices.clear()
    _by_call.clear()


def width_bucket(d: int) -> str:
    hi = 1 << max(0, math.ceil(math.log2(d)))
    lo = hi // 2 + 1 if hi > 1 else 1
    return f"d{lo}-{hi}"


def key(norm: str, dtype: torch.dtype, d: int, rows: int) -> str:
    rows_bucket = f"rows<={FEW_ROWS}" if rows <= FEW_ROWS else f"rows>{FEW_ROWS}"
    return f"{norm}/{str(dtype).replace('torch.', '')}/{width_bucket(d)}/{rows_bucket}"


# the implementations: (x, weight, bias, eps, k) -> y, or None where the path cannot take this call

_l2_gains: dict[tuple, torch.Tensor] = {}


def _torch_rms(x, weight, bias, eps, k):
    y = F.rms_norm(x, x.shape[-1:], weight, eps)
    return y if bias is None else y + bias


def _torch_l2(x, weight, bias, eps, k):
    d = x.shape[-1]
    if weight is None:
        # a constant gain of 1/sqrt(d), one per (d, dtype, device): scaling afterwards would cost another pass
        cache_key = (d, x.dtype, x.device)
        weight = _l2_gains.get(cache_key)
        if weight is None:
            weight = _l2_gains[cache_key] = torch.full((d,), d**-0.5, dtype=x.dtype, device=x.device)
    else:
        weight = weight * d**-0.5
    return _torch_rms(x, weight, bias, eps / d, k)


def _ours(x, weight, bias, eps, k, inv_n):
    from rmsnorm.kernels import triton_kernels

    return triton_kernels.row_norm(x, weight, bias, eps, k, inv_n) if triton_kernels.available() else None


IMPLEMENTATIONS: dict[str, dict[str, Callable]] = {
    "rmsnorm": {"torch": _torch_rms,
                "ours": lambda x, w, b, eps, k: _ours(x, w, b, eps, k, 1.0 / k),
                "reference": lambda x, w, b, eps, k: rms_norm_reference(x, w, b, eps, k)},
    "prmsnorm": {"ours": lambda x, w, b, eps, k: _ours(x, w, b, eps, k, 1.0 / k),
                 "reference": lambda x, w, b, eps, k: rms_norm_reference(x, w, b, eps, k)},
    "l2norm": {"torch": _torch_l2,
               "ours": lambda x, w, b, eps, k: _ours(x, w, b, eps, k, 1.0),
               "reference": lambda x, w, b, eps, k: l2_norm_reference(x, w, b, eps)},
}


def _usable(norm: str, dtype: torch.dtype | None = None, device: torch.device | None = None) -> tuple[str, ...]:
    from rmsnorm.kernels import triton_kernels

    ours = triton_kernels.available() and not (
        dtype == torch.bfloat16 and device is not None and device.type == "cuda"
        and torch.cuda.get_device_capability(device) < (8, 0))  # Triton's bf16 needs sm80 or newer
    return tuple(p for p in CANDIDATES[norm] if p != "ours" or ours)


_skipped: dict[str, dict[str, str]] = {}


def skipped() -> dict[str, dict[str, str]]:
    """Candidates that failed their first call, per choice key: path -> the error's first line."""
    return {k: dict(v) for k, v in _skipped.items()}


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def cuda_events_timer(fns: dict[str, Callable[[], object]], rounds: int = 3, calls: int = 5) -> dict[str, float]:
    """Seconds per call of each function: warm-up (Triton compiles here), then `rounds` interleaved rounds of
    `calls` back-to-back calls timed with CUDA events; the best round of each."""
    for fn in fns.values():
        fn()
        fn()
    torch.cuda.synchronize()
    best = dict.fromkeys(fns, math.inf)
    for _ in range(rounds):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            best[name] = min(best[name], start.elapsed_time(end) / 1e3 / calls)
    return best


timer: Callable[[dict[str, Callable[[], object]]], dict[str, float]] = cuda_events_timer


def _probe(norm: str, paths: tuple[str, ...], x: torch.Tensor, weight, bias, eps: float, k: int,
           name: str = "") -> str:
    """The fastest of `paths` at forward+backward on a random tensor of x's shape, dtype and device; a path
    that raises is skipped (`skipped()`), and with none left the reference is taken."""
    d = x.shape[-1]
    rows = max(1, min(x.numel() // d, PROBE_ELEMENTS // d))
    # outside inference mode (a tensor made in it cannot require grad) and autocast, whatever the caller is in
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        g = torch.Generator(device=x.device).manual_seed(0)
        xp = torch.randn(rows, d, device=x.device, dtype=x.dtype, generator=g).requires_grad_()
        dy = torch.randn(rows, d, device=x.device, dtype=x.dtype, generator=g)
        wp = None if weight is None else torch.ones(weight.shape, device=weight.device, dtype=weight.dtype,
                                                    requires_grad=True)
        bp = None if bias is None else torch.zeros(bias.shape, device=bias.device, dtype=bias.dtype,
                                                   requires_grad=True)
        inputs = [t for t in (xp, wp, bp) if t is not None]

        def step(impl):
            y = impl(xp, wp, bp, eps, k)
            torch.autograd.grad(y, inputs, dy)

        fns = {}
        for path in paths:
            impl = IMPLEMENTATIONS[norm][path]
            try:
                if impl(xp[:1], wp, bp, eps, k) is None:  # a path that declines this shape is no candidate
                    continue
                step(impl)  # one whole forward and backward: a path that fails, fails here, not in training
            except Exception as exc:  # noqa: BLE001  (any failure of a candidate only removes it)
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                _skipped.setdefault(name, {})[path] = f"{type(exc).__name__}: {reason}"
                continue
            fns[path] = lambda impl=impl: step(impl)
        if not fns:
            return "reference"
        if len(fns) == 1:
            return next(iter(fns))
        times = timer(fns)
    return min(times, key=times.get)


def _busy(x: torch.Tensor) -> bool:
    return torch.compiler.is_compiling() or (x.is_cuda and torch.cuda.is_current_stream_capturing())


def choose(norm: str, x: torch.Tensor, weight, bias, eps: float, k: int) -> str:
    """The path for this call: forced, cached, or measured now."""
    d = x.shape[-1]
    call = (norm, x.dtype, d, x.numel() <= FEW_ROWS * d)
    path = _by_call.get(call) if _forced is None else None
    if path is not None:  # the common case: one dict lookup per call
        return path
    paths = _usable(norm, x.dtype, x.device)
    if _forced is not None:
        return _forced if _forced in paths else paths[0]
    name = key(norm, x.dtype, d, x.numel() // d)
    path = _choices.get(name)
    if path is None:
        if _busy(x):
            return paths[0]
        # several processes: the same rule on every rank, no measurement (the module's docstring says why)
        path = _choices[name] = paths[0] if _distributed() else _probe(norm, paths, x, weight, bias, eps, k, name)
    _by_call[call] = path
    return path


def row_norm(norm: str, x: torch.Tensor, weight, bias, eps: float, k: int) -> torch.Tensor:
    """`norm` ('rmsnorm', 'prmsnorm' or 'l2norm') of a CUDA tensor on its chosen path."""
    impls = IMPLEMENTATIONS[norm]
    y = impls[choose(norm, x, weight, bias, eps, k)](x, weight, bias, eps, k)
    return impls["reference"](x, weight, bias, eps, k) if y is None else y
