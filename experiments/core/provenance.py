"""What produced a result: the project's git commit (and whether the tree had changes), the versions of torch,
Triton and Python, the machine and the date. Written into every summary, checkpoint and results file, so a
number can be traced to the code that made it and a stale file can be told from a fresh one."""

from __future__ import annotations

import datetime
import functools
import os
import platform
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


@functools.cache
def git_state(repo: Path = REPO) -> dict:
    """{"commit": full hash or "unknown", "dirty": True/False/None}: None where git or the repository is absent
    (an installed copy, an archive). RMSNORM_COMMIT (and RMSNORM_DIRTY=0/1) name them for a copy of the tree
    without its .git folder, such as the one a lent GPU machine gets."""
    if os.environ.get("RMSNORM_COMMIT"):
        dirty = os.environ.get("RMSNORM_DIRTY")
        return {"commit": os.environ["RMSNORM_COMMIT"], "dirty": None if dirty is None else dirty == "1"}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        # results/ is what runs and reports write (make demo rewrites it before its report): not the code
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                 ":(exclude)results"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return {"commit": commit.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def versions() -> dict:
    out = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    return out


def stamp(machine: str | None = None) -> dict:
    """The commit, versions, machine (when given) and UTC date of a result."""
    out = {**git_state(), **versions(), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")}
    if machine is not None:
        out["machine"] = machine
    return out


def describe(s: dict) -> str:
    """One line for a results file's head: 'commit abc1234 (with uncommitted changes), torch 2.14.1, ...'."""
    commit = s.get("commit", "unknown")
    short = commit[:10] if commit != "unknown" else "unknown"
    dirty = " (with uncommitted changes)" if s.get("dirty") else ""
    parts = [f"commit {short}{dirty}", f"torch {s.get('torch')}"]
    if s.get("triton"):
        parts.append(f"triton {s['triton']}")
    parts.append(f"python {s.get('python')}")
    if s.get("machine"):
        parts.append(s["machine"])
    if s.get("date"):
        parts.append(s["date"])
    return ", ".join(parts)
