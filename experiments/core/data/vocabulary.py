"""A task's word list, kept as vocab.json beside its prepared data: written by preparation, read by training."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.core.atomic import save_json
from experiments.core.errors import MissingData

FILE = "vocab.json"


def save_vocabulary(root: Path, vocab: list[str]) -> None:
    save_json(vocab, Path(root) / FILE)


def load_vocabulary(root: Path, make_target: str) -> list[str]:
    path = Path(root) / FILE
    if not path.exists():
        raise MissingData(f"no vocabulary at {path}; run `{make_target}`")
    return json.loads(path.read_text())
