"""A sweep's outcome read from its runs' own files, so it holds whichever launcher ran the jobs.

Under Hydra's basic launcher the jobs run in the launching process; under submitit (local or SLURM) each runs
in a process of its own, and a job that fails still returns normally to the launcher (it writes `error.json`
and moves on, so one failure does not stop the others). Only the files tell: a run finished when its folder
holds `summary.json`. `SweepStatus` (a Hydra callback, configs/train.yaml) reads them when the sweep ends,
writes `sweep_status.json` in the sweep folder and keeps the failures for the launching process's exit code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from experiments.core.atomic import save_json
from experiments.core.records import ERROR_FILE, SUMMARY_FILE

log = logging.getLogger(__name__)
STATUS_FILE = "sweep_status.json"
#: the runs of the last sweep this process launched that did not finish (scripts/train.py's exit code)
failed_runs: list[str] = []


def run_dirs(sweep_dir: Path) -> list[Path]:
    """Every job folder of a sweep: Hydra writes its `.hydra/` config folder into each."""
    return sorted(p.parent for p in Path(sweep_dir).glob("*/.hydra"))


def sweep_outcome(sweep_dir: Path) -> dict[str, Any]:
    """{'finished': [...], 'failed': [{'run': ..., 'error': ...}, ...]} from the job folders' files."""
    finished, failed = [], []
    for run in run_dirs(sweep_dir):
        if (run / SUMMARY_FILE).exists():
            finished.append(str(run))
            continue
        error_path = run / ERROR_FILE
        try:
            error = json.loads(error_path.read_text())["error"] if error_path.exists() else None
        except (OSError, ValueError, KeyError):
            error = f"unreadable {ERROR_FILE}"
        failed.append({"run": str(run), "error": error or "no summary.json and no error.json: killed or still running"})
    return {"sweep_dir": str(sweep_dir), "finished": finished, "failed": failed}


class SweepStatus(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        outcome = sweep_outcome(sweep_dir)
        save_json(outcome, sweep_dir / STATUS_FILE)
        failed_runs[:] = [f["run"] for f in outcome["failed"]]
        log.info("sweep %s: %d finished, %d failed", sweep_dir, len(outcome["finished"]), len(outcome["failed"]))
