"""Experiment loggers. W&B runs offline unless WANDB_MODE says otherwise, so nothing needs a network;
`wandb sync <run_dir>/wandb/offline-run-*` uploads later."""

from __future__ import annotations

import os
from pathlib import Path


def wandb_key(name: str) -> str:
    """One metric name scheme across tasks, so one workspace compares any task's norms without editing:
    train/<x>, val/<x> (dev or validation sets), test/<x>, time/<x>.

    train_loss -> train/loss; eval/valid_error -> val/error; eval/dev_image_rsum -> val/image_rsum;
    eval/best_dev_image_rsum -> val/best_image_rsum; eval/test_error -> test/error;
    eval/test14_bleu -> test/test14_bleu; timing/sec_per_epoch -> time/sec_per_epoch."""
    head, _, rest = name.partition("/")
    if not rest:
        return "train/" + (name[len("train_"):] if name.startswith("train_") else name)
    if head == "timing":
        return f"time/{rest}"
    for split, group in (("best_dev_", "val/best_"), ("best_valid_", "val/best_"), ("dev_", "val/"),
                         ("valid_", "val/"), ("test_", "test/")):
        if rest.startswith(split):
            return group + rest[len(split):]
    return ("test/" if rest.startswith("test") else "val/") + rest


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
            tags=[run_info["task"], run_info["norm"], run_info["preset"], f"seed{run_info['seed']}"],
            name=f"{run_info['task']}-{run_info['norm']}-s{run_info['seed']}",
            # the keys a workspace groups and filters by, at the top level beside the full resolved config
            # (the sweep folder as hydra_sweep: W&B reads a config key "sweep" as its own sweeps)
            config={**config, **{k: run_info[k] for k in ("task", "norm", "seed", "preset")},
                    "hydra_sweep": run_info["sweep"]},
            reinit="finish_previous",
        )

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None:
            self.run.log({wandb_key(k): v for k, v in metrics.items()}, step=step)

    def finish(self, summary: dict | None, exit_code: int = 0) -> None:
        if self.run is None:
            return
        if summary is not None:
            # the final values under the same names as the curves, so a table view shows them per run
            self.run.summary.update(
                {**{wandb_key(f"eval/{k}"): v for k, v in summary["metrics"].items()},
                 **{wandb_key(f"timing/{k}"): v for k, v in summary["timing"].items() if v is not None}}
            )
        self.run.finish(exit_code=exit_code)
        self.run = None
