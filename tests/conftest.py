import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from experiments.core.training.run import prepare_task_data

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
os.environ.setdefault("WANDB_MODE", "offline")
# the scripts the tests start would re-execute themselves once to set these (experiments/core/training/malloc.py),
# importing torch twice; set here, every child starts with them
from experiments.core.training.malloc import MALLOC_ENV  # noqa: E402

os.environ.update(MALLOC_ENV)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # parallel workers (make test): one thread each, so two workers share two cores without oversubscribing;
    # subprocesses the tests start inherit it
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
os.environ.setdefault("WANDB_SILENT", "true")


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=overrides)


def prepare(overrides: list[str]) -> Path:
    """What scripts/prepare.py does for these overrides: training only reads."""
    return prepare_task_data(compose_cfg(overrides))


TASKS = sorted(p.stem for p in (CONFIGS / "task").glob("*.yaml"))


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory):
    """A data_dir with every task's smoke data set, as `scripts/prepare.py ... preset=smoke` writes it; made once
    for all parallel workers (their temporary folders share a parent), the others wait on its lock."""
    import fcntl

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    data_dir = root / "smoke-data-shared"
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(root / "smoke-data-shared.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (data_dir / ".complete").exists():
            for task in TASKS:
                prepare([f"task={task}", "preset=smoke", f"data_dir={data_dir}"])
            (data_dir / ".complete").write_text("")
        fcntl.flock(lock, fcntl.LOCK_UN)
    return data_dir


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    """A data_dir holding a tiny CIFAR-10 in the real cifar-10-batches-py pickle format."""
    from experiments.cifar10.pickle_format import write_cifar_folder
    from experiments.cifar10.synthetic import make_images

    data_dir = tmp_path_factory.mktemp("data")
    train_x, train_y = make_images(300, seed=11)
    test_x, test_y = make_images(100, seed=12)
    write_cifar_folder(data_dir / "cifar10", train_x, train_y, test_x, test_y)
    prepare(tiny_cifar(data_dir))  # the ZCA, as `make data-cifar10` fits it
    return data_dir


def tiny_cifar(data_dir: Path, *extra: str) -> list[str]:
    """The paper preset shrunk to seconds: 3 steps an epoch, tiny widths."""
    return [
        "task=cifar10", "preset=paper", f"data_dir={data_dir}", "logger=none",
        "task.model.widths=[4,8]", "train.epochs=2", "train.log_every=1", "train.eval_every=3",
        "train.ckpt_every=3", "train.timing_warmup=1", "train.progress=false", *extra,
    ]


def tiny_cifar_cli(data_dir: Path, *extra: str) -> list[str]:
    """tiny_cifar's overrides for scripts/train.py, which takes task= first."""
    return [a for a in tiny_cifar(data_dir, *extra) if not a.startswith("task=")]


def run_script(*args: str, cwd: Path = REPO, timeout: int = 300, env: dict | None = None):
    import os
    import subprocess

    environment = None if env is None else {**os.environ, **env}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=environment)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


class Crash(Exception):
    """What a test raises inside a training step to stand for a killed process."""


def patch_train_step(monkeypatch, task_class, at_call: int, before=None, after=None):
    """Wrap task_class.train_step: `before()` runs ahead of call number `at_call`, `after(loss)` may replace
    its loss. Returns the original, to put back with monkeypatch.setattr."""
    real_step = task_class.train_step
    calls = {"n": 0}

    def step(self, batch, model=None):
        calls["n"] += 1
        hit = calls["n"] == at_call
        if hit and before is not None:
            before()
        loss = real_step(self, batch, model)
        return after(loss) if hit and after is not None else loss

    monkeypatch.setattr(task_class, "train_step", step)
    return real_step


# The unit tests: the library, the loop's parts and the docs, each in a module of its own, no training run.
# Every other module is marked `integration` (training runs, subprocesses, torchrun, submitit): `make test-fast`
# leaves those out, `make test` runs everything.
UNIT_MODULES = {"test_norms", "test_kernels", "test_cuda_dispatch", "test_lstm", "test_gru", "test_library_structure",
                "test_stepping", "test_batching", "test_stats", "test_generated",
                "test_docs", "test_paper_tables", "test_readme", "test_configs"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] not in UNIT_MODULES:
            item.add_marker(pytest.mark.integration)
