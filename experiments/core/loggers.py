"""Experiment loggers. W&B runs offline unless WANDB_MODE says otherwise, so nothing needs a network;
`wandb sync <run_dir>/wandb/offline-run-*` uploads later."""

from __future__ import annotations

import os
from pathlib import Path


class NullLogger:
    """Logs nothing beyond the run's own metrics.jsonl and summary.json."""

    def start(self, run_info: dict, config: dict, run_dir: Path) -> None:
        pass

    def log(self, metrics: dict, step: int) -> None:
        pass

    def finish(self, summary: dict | None, exit_code: int = 0) -> None:
        pass


class WandbLogger(NullLogger):
    def __init__(self, project: str = "rmsnorm-replication", entity: str | None = None, mode: str | None = None):
        self.project = project
        self.entity = entity
        self.mode = mode or os.environ.get("WANDB_MODE", "offline")
        self.run = None

    def start(self, run_info: dict, config: dict, run_dir: Path) -> None:
        import wandb

        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            mode=self.mode,
            dir=str(run_dir),
            # runs of one sweep and task side by side; the norm is a tag so a dashboard can colour by it
            group=f"{run_info['task']}/{run_info['sweep']}",
            job_type=run_info["preset"],
            tags=[run_info["task"], run_info["norm"], run_info["preset"]],
            name=f"{run_info['task']}-{run_info['norm']}-s{run_info['seed']}",
            config=config,
            reinit="finish_previous",
        )

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self, summary: dict | None, exit_code: int = 0) -> None:
        if self.run is None:
            return
        if summary is not None:
            self.run.summary.update(
                {**{f"final/{k}": v for k, v in summary["metrics"].items()},
                 **{f"timing/{k}": v for k, v in summary["timing"].items() if v is not None}}
            )
        self.run.finish(exit_code=exit_code)
        self.run = None
