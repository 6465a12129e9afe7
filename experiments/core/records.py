"""The files a run leaves behind, the contract `scripts/report.py` reads: `metrics.jsonl` (the curve, one
JSON object per line) and `summary.json` (the final record)."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.core.atomic import save_json, save_text

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ERROR_FILE = "error.json"
CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.pt"  # the one before: kept in case the last is damaged
PREEMPTED_FILE = "preempted.json"  # a signal stopped the run after a checkpoint: the next start resumes


class MetricsFile:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS_FILE

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def start(self, header: dict) -> None:
        """A fresh curve whose first line says which run it is ({"header": identity}, no step: readers skip it)."""
        save_text(json.dumps({"header": header}) + "\n", self.path)

    def truncate_after(self, step: int) -> None:
        """Drop records past `step`: a resumed run rewrites what the crashed one logged after its checkpoint."""
        if not self.path.exists():
            return
        kept = [record for record in _records(self.path, headers=True) if record.get("step", 0) <= step]
        save_text("".join(json.dumps(record) + "\n" for record in kept), self.path)


def read_header(run_dir: Path) -> dict | None:
    """The identity a run's metrics.jsonl starts with, or None (a curve written before headers existed)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return None
    return next((r["header"] for r in _records(path, headers=True) if "header" in r), None)


def _records(path: Path, headers: bool = False) -> list[dict]:
    """The file's records (with `headers`, the header line too); a last line cut short (the process killed, or
    the disk full, mid-append) is left out."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return records if headers else [r for r in records if "header" not in r]


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return _records(path)


def write_summary(run_dir: Path, summary: dict) -> None:
    save_json(summary, Path(run_dir) / SUMMARY_FILE)


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())


def write_error(run_dir: Path, error: dict) -> None:
    save_json(error, Path(run_dir) / ERROR_FILE)
