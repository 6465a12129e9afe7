"""Every task's W&B workspace, built offline: its grouping, filters, and panels that read only metric names
the runs really log (a smoke run's records, passed through the W&B logger), so a renamed metric fails here
instead of leaving an empty panel; and the script's one-line refusal without a login."""

import json

import pytest

from experiments.core.records import read_metrics
from experiments.core.reporting.dashboards import plotted_metrics, workspace
from experiments.core.training.loggers import WandbLogger
from experiments.core.training.run import build_task_class, run_training
from tests.conftest import TASKS, compose_cfg, run_script


class _RecordingRun:
    """What WandbLogger writes to a run, kept instead of sent."""

    def __init__(self):
        self.logged, self.summary = set(), {}

    def log(self, values, step):
        self.logged |= set(values)

    def finish(self, exit_code=0):
        pass


def _logged_names(run_dir) -> set[str]:
    logger, run = WandbLogger(), _RecordingRun()
    logger.run = run
    for record in read_metrics(run_dir):
        logger.log({k: v for k, v in record.items() if k != "step"}, record["step"])
    logger.finish(json.loads((run_dir / "summary.json").read_text()))
    return run.logged | set(run.summary)


@pytest.mark.parametrize("task", TASKS)
def test_each_tasks_workspace_plots_what_its_runs_log(task, smoke_data, tmp_path):
    cfg = compose_cfg([f"task={task}", "norm=rmsnorm", "preset=smoke", f"data_dir={smoke_data}", "logger=none",
                       "train.progress=false"])
    run_training(cfg, tmp_path)
    task_class = build_task_class(cfg)
    view = workspace(task, cfg.task.primary_metric, "entity", "project", "smoke",
                     task_class.selection_metric, sweep="s1", unit=task_class.PAPER_TIME_UNIT[0])
    missing = plotted_metrics(view) - _logged_names(tmp_path)
    assert not missing, f"{task}: panels read metrics no run logs: {sorted(missing)}"
    assert [g.name for g in view.runset_settings.groupby] == ["norm"]
    filters = str(view.runset_settings.filters)
    assert f"Config(\"task\") == '{task}'" in filters and "Config(\"preset\") == 'smoke'" in filters
    assert "Config(\"hydra_sweep\") == 's1'" in filters
    titles = [p.title for s in view.sections for p in s.panels]
    assert any("training seconds" in t for t in titles) and any("wall clock" in t for t in titles)


def test_without_a_login_the_script_says_so_in_one_line(tmp_path):
    r = run_script("scripts/wandb_dashboards.py", env={"HOME": str(tmp_path), "WANDB_API_KEY": "",
                                                       "WANDB_BASE_URL": "http://127.0.0.1:9"})
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "wandb login" in lines[0] and "Traceback" not in r.stderr
