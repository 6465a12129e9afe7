"""Every task x every norm it declares, through scripts/train.py with preset=smoke, and a norm registered in
one place (the registry) trained on every task: adding a task or a norm tests itself."""

import json

import pytest
import torch

from experiments.core.training.config import register_norm_configs
from experiments.core.training.run import run_training
from rmsnorm import NormInfo, register_norm, unregister_norm
from tests.conftest import TASKS, compose_cfg, prepare, run_script


@pytest.mark.parametrize("task", TASKS)
def test_every_norm_of_every_task_trains_through_the_cli(task, smoke_data, tmp_path):
    norms = list(compose_cfg([f"task={task}"]).task.norms)
    sweep = tmp_path / "sweep"
    r = run_script("scripts/train.py", "-m", f"task={task}", f"norm={','.join(norms)}", "preset=smoke",
                   f"data_dir={smoke_data}", "logger=none", "train.progress=false", f"hydra.sweep.dir={sweep}",
                   timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summaries = {s["norm"]: s for s in (json.loads(p.read_text()) for p in sweep.rglob("summary.json"))}
    assert sorted(summaries) == sorted(norms)
    for norm, s in summaries.items():
        assert s["task"] == task and s["preset"] == "smoke" and s["status"] == "finished"
        assert s["steps"] > 0 and s["timing"]["sec_per_1k_steps"] > 0
        metric = s["metrics"][s["primary_metric"]]
        assert metric == metric, f"{norm}: {s['primary_metric']} is NaN"
        # the summary says what differs from the paper's setting, computed from the configs
        assert any(line.startswith("task.data_subdir:") for line in s["differs_from_paper"])


class CenteredRMSNorm(torch.nn.Module):
    """A toy norm for the test: subtract the mean, divide by the RMS, one gain per feature (or channel)."""

    def __init__(self, size, eps, maps=False):
        super().__init__()
        self.eps, self.dims = eps, ((-2, -1) if maps else (-1,))
        self.weight = torch.nn.Parameter(torch.ones((size, 1, 1) if maps else (size,)))

    calls = 0

    def forward(self, x):
        CenteredRMSNorm.calls += 1
        x = x - x.mean(self.dims, keepdim=True)
        return x * torch.rsqrt(x.pow(2).mean(self.dims, keepdim=True) + self.eps) * self.weight


@pytest.fixture
def toy_norm():
    register_norm(NormInfo("centredrms", "Centred RMS", features=lambda d, eps, **_: CenteredRMSNorm(d, eps),
                           maps=lambda c, eps, **_: CenteredRMSNorm(c, eps, maps=True), eps=1e-6))
    register_norm_configs()
    yield "centredrms"
    unregister_norm("centredrms")


@pytest.mark.parametrize("task", TASKS)
def test_a_norm_registered_in_one_place_trains_on_every_task(task, toy_norm, smoke_data, tmp_path):
    overrides = [f"task={task}", f"norm={toy_norm}", "preset=smoke", f"data_dir={smoke_data}", "logger=none",
                 "train.progress=false"]
    prepare(overrides)
    CenteredRMSNorm.calls = 0
    summary = run_training(compose_cfg(overrides), tmp_path)
    # its own default eps, unless the task's upstream protocol names one for this norm (it cannot: it is new)
    assert summary["norm"] == toy_norm and summary["norm_eps"] == 1e-6
    assert CenteredRMSNorm.calls > summary["steps"]  # the model really ran the toy norm
