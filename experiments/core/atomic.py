"""Write files so that a crash leaves either the old version or the new one, never half of either."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

_UMASK = os.umask(0)
os.umask(_UMASK)



def _replace_atomically(path: Path, write, keep_previous: Path | None = None) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`; with `keep_previous`, the old file is
    first renamed there (a crash between the two renames leaves both, the new one still under its temporary name,
    and `keep_previous` readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # what open() would give, not mkstemp's owner-only 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: Path, keep_previous: Path | None = None) -> None:
    _replace_atomically(Path(path), lambda f: torch.save(obj, f), keep_previous)


def save_json(obj: Any, path: Path) -> None:
    _replace_atomically(Path(path), lambda f: f.write(json.dumps(obj, indent=2, default=str).encode() + b"\n"))


def save_text(text: str, path: Path) -> None:
    _replace_atomically(Path(path), lambda f: f.write(text.encode()))


def save_lines(lines: Iterable[str], path: Path) -> None:
    """Lines streamed into the file (a data set of millions of records is never one string in memory)."""
    _replace_atomically(Path(path), lambda f: f.writelines(line.encode() for line in lines))


def write_or_explain(save: Callable[[], None], path: Path, when: str) -> None:
    """save(); where it fails (a full disk), the UserError says the previous file is intact, as _replace_atomically
    leaves it."""
    from experiments.core.errors import UserError

    try:
        save()
    except OSError as exc:
        raise UserError(
            f"could not write {path} {when} ({exc.strerror or exc}); the previous version of it and every finished "
            f"result are intact. Free space, then rerun with resume=true."
        ) from exc
