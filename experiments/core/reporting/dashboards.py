"""Each task's W&B comparison workspace as code (wandb-workspaces): runs filtered by task and preset (and
sweep, if asked), grouped by norm, with the paper's views as panels. Built offline; `scripts/wandb_dashboards.py`
saves them. The metric names come from the loggers' scheme (`loggers.wandb_key`), so a renamed metric shows up
in `tests/experiments/core/test_dashboards.py` instead of as an empty panel."""

from __future__ import annotations

from experiments.core.training.loggers import wandb_key


def task_metrics(task: str, primary_metric: str, selection_metric: str | None = None,
                 unit: str = "sec_per_1k_steps") -> dict[str, str]:
    """The W&B names a task's panels plot: its training loss and clock, its test metric, its validation metric
    (if it has one) and its time in the paper's unit (`Task.PAPER_TIME_UNIT`), each as the W&B logger writes it."""
    names = {"loss": wandb_key("train_loss"), "clock": wandb_key("train_seconds"),
             "test": wandb_key(f"eval/{primary_metric}"), "time": wandb_key(f"timing/{unit}"),
             "wall": wandb_key(f"timing/wall_{unit}")}
    if selection_metric:
        names["validation"] = wandb_key(f"eval/{selection_metric}")
    return names


def workspace(task: str, primary_metric: str, entity: str, project: str, preset: str = "paper",
              selection_metric: str | None = None, sweep: str | None = None, unit: str = "sec_per_1k_steps"):
    """A saved view of `project` for one task: runs of this task and preset (and sweep), grouped by norm
    (mean with the min-max band over seeds), panels for loss against steps and against training seconds
    (Fig. 1), the test and validation metrics against steps (Fig. 5 for reading), time in the paper's unit per
    norm (bars, mean and spread over seeds) and a run table pinned to the final metrics."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    m = task_metrics(task, primary_metric, selection_metric, unit)
    group = {"groupby": wr.Config("norm"), "groupby_aggfunc": "mean", "groupby_rangefunc": "minmax"}
    curves = [wr.LinePlot(title="training loss against steps", x="Step", y=[m["loss"]], **group),
              wr.LinePlot(title="training loss against training seconds (Fig. 1)", x=m["clock"], y=[m["loss"]],
                          **group),
              wr.LinePlot(title=f"{primary_metric} against steps", x="Step", y=[m["test"]], **group)]
    if "validation" in m:
        curves.append(wr.LinePlot(title=f"{selection_metric} against steps", x="Step", y=[m["validation"]],
                                  **group))
    speed = [wr.BarPlot(title=f"{m['time'].split('/')[-1]} per norm (training clock)", metrics=[m["time"]],
                        **group),
             wr.BarPlot(title="the same with evaluation (wall clock, the paper's measure)", metrics=[m["wall"]],
                        **group)]
    filters = [ws.Config("task") == task, ws.Config("preset") == preset]
    if sweep:
        filters.append(ws.Config("hydra_sweep") == sweep)  # the loggers' name for the sweep folder
    columns = ["run:displayName", "config:norm", "config:seed", f"summary:{m['test']}", f"summary:{m['time']}",
               f"summary:{m['wall']}"]
    return ws.Workspace(
        entity=entity, project=project, name=f"{task} ({preset}): norms compared",
        sections=[ws.Section(name="curves", panels=curves, is_open=True),
                  ws.Section(name="speed", panels=speed, is_open=True)],
        runset_settings=ws.RunsetSettings(filters=filters, groupby=[ws.Config("norm")], pinned_columns=columns),
    )


def plotted_metrics(view) -> set[str]:
    """Every metric name a workspace's panels and pinned columns read (the x-axis "Step" aside)."""
    names = set()
    for section in view.sections:
        for panel in section.panels:
            names |= set(getattr(panel, "y", None) or []) | set(getattr(panel, "metrics", None) or [])
            x = getattr(panel, "x", None)
            if x and x != "Step":
                names.add(x)
    names |= {c.split(":", 1)[1] for c in view.runset_settings.pinned_columns if c.startswith("summary:")}
    return names
