"""Save each task's W&B comparison workspace in your project: python scripts/wandb_dashboards.py

One saved view per task (experiments/core/reporting/dashboards.py): its runs filtered by task and preset (and
--sweep), grouped by norm, with loss against steps and against training seconds, the test and validation
metrics against steps, time per norm in the paper's unit (training clock and wall clock) and a run table.
Needs a network and a W&B login (`.venv/bin/wandb login`) here only; training logs offline.
"""

from __future__ import annotations

import argparse
import sys

from experiments.core.reporting.dashboards import workspace
from experiments.core.training.config import CONFIG_DIR, compose_config
from experiments.core.training.run import build_task_class

TASKS = sorted(p.stem for p in (CONFIG_DIR / "task").glob("*.yaml"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entity", help="W&B entity (default: your login's)")
    parser.add_argument("--project", default="rmsnorm-replication", help="the project the runs log to")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma list")
    parser.add_argument("--preset", default="paper", help="whose runs each view shows (paper, demo, smoke)")
    parser.add_argument("--sweep", help="only the runs of this sweep (its folder name)")
    args = parser.parse_args(argv)
    try:
        import wandb

        api = wandb.Api(timeout=20)
        entity = args.entity or api.default_entity
    except Exception as exc:  # no login, no network: one line, not a traceback
        print(f"W&B is not reachable or not logged in ({str(exc).splitlines()[0]}): run `.venv/bin/wandb login` "
              "on a machine with a network, then `make wandb-dashboards`", file=sys.stderr)
        return 1
    for task in args.tasks.split(","):
        cfg = compose_config([f"task={task}", f"preset={args.preset}"])
        task_class = build_task_class(cfg)
        view = workspace(task, cfg.task.primary_metric, entity, args.project, args.preset,
                         task_class.selection_metric, args.sweep, task_class.PAPER_TIME_UNIT[0])
        try:
            saved = view.save()
        except Exception as exc:
            print(f"could not save the {task} workspace to {entity}/{args.project}: {str(exc).splitlines()[0]}",
                  file=sys.stderr)
            return 1
        print(f"{task}: {getattr(saved, 'url', '') or view.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
