"""Every config composes, and preset=paper is the paper's setting (docs/paper.md)."""

import dataclasses
import functools
import typing
from pathlib import Path

import hydra
import pytest
from omegaconf import MISSING

from experiments.core.training.config import differences_from_paper, typed_task_config
from experiments.core.training.task import Task
from tests.conftest import CONFIGS, compose_cfg

TASKS = sorted(p.stem for p in (CONFIGS / "task").glob("*.yaml"))


def _norms(task):
    return list(compose_cfg([f"task={task}"]).task.norms)


PRESETS = sorted(p.stem for p in (CONFIGS / "preset").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("task", TASKS)
def test_every_task_norm_preset_composes_and_fits_the_tasks_schema(task, preset):
    for norm in _norms(task):
        cfg = compose_cfg([f"task={task}", f"norm={norm}", f"preset={preset}"])
        assert cfg.task.name == task and cfg.preset.name == preset
        spec = hydra.utils.instantiate(cfg.norm)
        assert spec.name == norm
        assert cfg.train.epochs or cfg.train.max_steps
        make_task = hydra.utils.instantiate(cfg.task.builder)
        assert isinstance(make_task, functools.partial) and issubclass(make_task.func, Task)
        typed_task_config(make_task.func.Config, cfg.task)
        hydra.utils.instantiate(cfg.logger)


def test_every_task_has_every_preset_and_a_paper_table():
    assert {"smoke", "demo", "paper"} <= set(PRESETS)
    for task in TASKS:
        for preset in PRESETS:
            assert (CONFIGS / "task_preset" / f"{task}_{preset}.yaml").exists()
        assert (Path(CONFIGS).parent / "results" / "paper" / f"{task}.csv").exists()


def test_cifar10_paper_preset_is_the_papers_setting():
    cfg = compose_cfg(["task=cifar10", "preset=paper", "norm=prmsnorm"])
    t = cfg.task
    assert cfg.train.epochs == 200 and t.batch_size == 100 and t.schedule_epochs == 200
    assert list(t.model.widths) == [96, 192] and t.model.dropout == 0.5
    assert t.model.noise_std == 0.15 and t.model.leaky_slope == 0.1
    assert t.optim.lr_by_norm.none == 3e-4 and t.optim.lr_by_norm.default == 3e-3
    assert t.optim.beta1 == 0.9 and t.optim.beta1_late == 0.5
    assert t.zca_eps == 1e-5 and t.synthetic is None and t.train_limit is None
    assert cfg.norm.p == 0.125
    assert set(t.norms) == {"none", "batchnorm", "weightnorm", "layernorm", "rmsnorm", "prmsnorm"}


def test_what_differs_from_the_paper_is_computed_from_the_config():
    cfg = compose_cfg(["task=translation", "preset=demo", "norm=rmsnorm", "task.model.hidden=128"])
    lines = differences_from_paper(cfg)
    assert "task.model.hidden: 1024 -> 128" in lines  # an override shows, not the preset's 64
    assert "train.max_steps: 300000 -> 400" in lines
    assert not any(line.startswith("train.log_every") for line in lines)  # bookkeeping left out
    assert differences_from_paper(compose_cfg(["task=cifar10", "preset=paper", "norm=layernorm"])) == []


@pytest.mark.parametrize("task, eps", [("translation", 1e-5), ("cifar10", 1e-6), ("reading", 1e-5),
                                       ("retrieval", 1e-5), ("transformer", 1e-8)])
def test_each_task_builds_its_norms_with_its_upstream_eps(task, eps):
    from experiments.core.training.config import norm_spec

    assert norm_spec(compose_cfg([f"task={task}", "norm=rmsnorm", "preset=paper"])).eps == eps
    assert norm_spec(compose_cfg([f"task={task}", "norm=layernorm", "preset=demo"])).eps == eps
    # a command-line eps wins; a norm the task names no eps for keeps its own default
    assert norm_spec(compose_cfg([f"task={task}", "norm=rmsnorm", "norm.eps=0.001"])).eps == 1e-3
    assert norm_spec(compose_cfg([f"task={task}", "norm=batchnorm"])).eps == 1e-5


def _protocol_rows():
    import csv

    with (CONFIGS / "upstream_protocol.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("row", [r for r in _protocol_rows() if r["key"]], ids=lambda r: f"{r['task']}-{r['key']}")
def test_the_paper_presets_hold_the_upstream_protocol_table(row):
    """Each setting of docs/protocol.md's 'upstream protocol vs this suite' table that names a config key is what
    preset=paper composes to, so the table cannot drift from the configs."""
    import yaml
    from omegaconf import OmegaConf

    cfg = compose_cfg([f"task={row['task']}", "preset=paper"])
    assert OmegaConf.select(cfg, row["key"], throw_on_missing=True) == yaml.safe_load(row["ours"]), row["setting"]


def test_every_upstream_protocol_row_is_complete():
    rows = _protocol_rows()
    assert {r["task"] for r in rows} == set(TASKS)
    for r in rows:
        assert r["setting"] and r["upstream"] and r["source"] and r["ours"], r


def _schemas(schema: type):
    yield schema
    for hint in typing.get_type_hints(schema).values():
        for t in typing.get_args(hint) or (hint,):
            if dataclasses.is_dataclass(t):
                yield from _schemas(t)


@pytest.mark.parametrize("task", TASKS)
def test_a_tasks_values_live_in_its_yaml_and_the_schema_only_types_them(task):
    """One home per value: a default in the dataclass would be a second, silently shadowed by the YAML."""
    cfg = compose_cfg([f"task={task}"])
    schema = hydra.utils.instantiate(cfg.task.builder).func.Config
    for s in _schemas(schema):
        for f in dataclasses.fields(s):
            assert f.default is MISSING and f.default_factory is dataclasses.MISSING, \
                f"{s.__qualname__}.{f.name} has a default; put the value in configs/task/{task}.yaml"
