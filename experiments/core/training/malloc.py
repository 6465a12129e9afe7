"""Steady CPU timings: glibc returns blocks above its adaptive mmap threshold to the OS, so a tensor of a
few MB can page-fault in anew (one fault per 4 KB) on some steps and not on others, depending on what ran
before; the same measurement then moves several-fold between runs. Fixed thresholds keep freed blocks in
the heap, for every norm alike. Applied by re-executing the script once with the variables set."""

from __future__ import annotations

import os
import platform
import sys

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def reexec_with_stable_malloc() -> None:
    """Re-run this process with MALLOC_ENV set (Linux/glibc only; a no-op once set, or with
    RMSNORM_KEEP_MALLOC=1)."""
    if platform.system() != "Linux" or os.environ.get("RMSNORM_KEEP_MALLOC") == "1":
        return
    if all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})


def describe() -> str:
    return " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items())
