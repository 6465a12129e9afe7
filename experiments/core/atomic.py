"""Write files so that a crash leaves either the old version or the new one, never half of either."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

_UMASK = os.umask(0)
os.umask(_UMASK)



def _replace_atomically(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # what open() would give, not mkstemp's owner-only 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: Path) -> None:
    _replace_atomically(Path(path), lambda f: torch.save(obj, f))


def save_json(obj: Any, path: Path) -> None:
    _replace_atomically(Path(path), lambda f: f.write(json.dumps(obj, indent=2, default=str).encode() + b"\n"))


def save_text(text: str, path: Path) -> None:
    _replace_atomically(Path(path), lambda f: f.write(text.encode()))
