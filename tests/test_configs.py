"""Every config composes, and preset=paper is PAPER.md's setting."""

from pathlib import Path

import hydra
import pytest

from tests.conftest import CONFIGS, compose_cfg

TASKS = sorted(p.stem for p in (CONFIGS / "task").glob("*.yaml"))


def _norms(task):
    return list(compose_cfg([f"task={task}"]).task.norms)


@pytest.mark.parametrize("preset", ["demo", "paper"])
@pytest.mark.parametrize("task", TASKS)
def test_every_task_norm_preset_composes(task, preset):
    for norm in _norms(task):
        cfg = compose_cfg([f"task={task}", f"norm={norm}", f"preset={preset}"])
        assert cfg.task.name == task and cfg.preset.name == preset
        spec = hydra.utils.instantiate(cfg.norm)
        assert spec.name == norm
        assert cfg.train.epochs or cfg.train.max_steps
        assert hydra.utils.get_class(cfg.task.builder._target_)
        hydra.utils.instantiate(cfg.logger)


def test_every_task_has_both_presets_and_a_paper_table():
    for task in TASKS:
        for preset in ("demo", "paper"):
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
