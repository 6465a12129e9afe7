"""Generated data sets (the demo's and the smoke tests'): what was generated is recorded beside it, so a preset
that asks for other sizes or another difficulty regenerates the folder, and everything derived from the old
set (BPE model, vocabulary, id caches, ZCA) goes with it, instead of silently training on the old set."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from experiments.core.atomic import save_json

log = logging.getLogger(__name__)
RECORD = "generated.json"
KEEP = {".prepare.lock"}  # the lock the preparing process holds


def ensure_generated(root: Path, wanted: dict, write: Callable[[], None], complete: bool) -> bool:
    """Run `write` into an emptied `root` unless root/generated.json records exactly `wanted` and the set is
    `complete` (the caller's check that the files its loader reads are there); True if it wrote. Called under
    the preparation lock (experiments/core/training/task.py)."""
    root = Path(root)
    record = root / RECORD
    have = json.loads(record.read_text()) if record.exists() else None
    if have == wanted and complete:
        return False
    if root.exists():
        for path in root.iterdir():
            if path.name not in KEEP:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    root.mkdir(parents=True, exist_ok=True)
    log.info("generating %s: %s", root, wanted)
    write()
    save_json(wanted, record)  # last: an interrupted generation has no record and starts again
    return True
