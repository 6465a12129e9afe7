"""Training batches built by a DataLoader worker (task.loader_workers=1) are the batches the training process
would build, in the same order, and leave the model's random stream alone."""

import pytest

from experiments.core.errors import UserError
from experiments.core.records import read_metrics
from experiments.core.training.run import run_training
from tests.conftest import compose_cfg


def _run(task, data_dir, run_dir, workers, *extra):
    cfg = compose_cfg([f"task={task}", "norm=rmsnorm", "preset=smoke", f"data_dir={data_dir}", "logger=none",
                       "train.progress=false", "train.log_every=1", f"task.loader_workers={workers}", *extra])
    return run_training(cfg, run_dir)


@pytest.mark.parametrize("task", ["translation", "reading", "retrieval"])
def test_a_loader_worker_gives_the_same_training_as_the_training_process(task, smoke_data, tmp_path):
    # reading keeps its dropout: a loader that drew its seed from the global stream would move its masks
    extra = ["train.epochs=2"] if task != "translation" else ["train.max_steps=6"]
    inline = _run(task, smoke_data, tmp_path / "inline", 0, *extra)
    worker = _run(task, smoke_data, tmp_path / "worker", 1, *extra)
    assert [m["train_loss"] for m in read_metrics(tmp_path / "worker")] == \
        [m["train_loss"] for m in read_metrics(tmp_path / "inline")]
    assert worker["metrics"] == inline["metrics"]


def test_cifar10_refuses_a_loader_worker_at_start_up(smoke_data, tmp_path):
    with pytest.raises(UserError, match="task.loader_workers=1: CIFAR-10's batches are cut from images already"):
        _run("cifar10", smoke_data, tmp_path, 1)


def test_more_than_one_loader_worker_is_refused(smoke_data, tmp_path):
    with pytest.raises(UserError, match="task.loader_workers=2: the batches come from one generator"):
        _run("retrieval", smoke_data, tmp_path, 2)


def test_a_user_error_in_the_worker_keeps_its_one_line():
    from experiments.core.data import loading
    from experiments.core.errors import MissingData

    def batches():
        yield 1
        raise MissingData("the ids file is cut short; rerun `make data-x`")

    it = loading.background(batches, 1, pin=False)
    assert next(it) == 1
    with pytest.raises(MissingData) as caught:
        next(it)
    assert str(caught.value) == "the ids file is cut short; rerun `make data-x`"
