"""Data-parallel training under torchrun on CPU (gloo): two processes with the global batch split between them
follow the loss curve of one process, for every task; a pre-empted two-process job resumes; each task's
batch_dims split its real batches consistently."""

import json

import pytest
import torch

from experiments.core.records import read_metrics
from experiments.core.training import distributed
from experiments.core.training.run import build_task, run_training
from tests.conftest import REPO, TASKS, compose_cfg, run_script
from tests.fault_injection import overrides as fault_at

# what draws random numbers inside a step differs between one and two processes (dropout masks of other
# shapes), so the comparison turns it off; everything else is the smoke preset
NO_NOISE = {"cifar10": ["task.model.dropout=0", "task.model.noise_std=0"], "reading": ["task.model.dropout=0"],
            "translation": [], "retrieval": [],
            # the paper's batching: by tokens (the same batches on 1 or 2 processes), two micro-batches a step
            "transformer": ["task.batch_tokens=120", "task.optim.accumulate=2"]}


def _train(task, data_dir, run_dir, processes, *extra, env=None):
    args = ["scripts/train.py", f"task={task}", "norm=rmsnorm", "preset=smoke", f"data_dir={data_dir}",
            "logger=none", "train.progress=false", "train.log_every=1", f"hydra.run.dir={run_dir}",
            *NO_NOISE[task], *extra]
    if processes > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    # one thread per process: two processes on two cores, and the single one on the same arithmetic
    return run_script(*args, env={"OMP_NUM_THREADS": "1", **(env or {})})


def _curve(run_dir):
    return [record["train_loss"] for record in read_metrics(run_dir)]


def _train_here(task, data_dir, run_dir):
    """The one-process run in this process (the same code path as scripts/train.py without torchrun), on one
    thread like each torchrun process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_training(compose_cfg([f"task={task}", "norm=rmsnorm", "preset=smoke", f"data_dir={data_dir}",
                                  "logger=none", "train.progress=false", "train.log_every=1", *NO_NOISE[task]]),
                     run_dir)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("task", TASKS)
def test_two_processes_follow_the_one_process_loss_curve(task, smoke_data, tmp_path):
    _train_here(task, smoke_data, tmp_path / "one")
    two = _train(task, smoke_data, tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert _curve(tmp_path / "two") == pytest.approx(_curve(tmp_path / "one"), rel=1e-4)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["timing"]["processes"] == 2
    # rank 0 alone writes: one record per step, no second summary or error file
    assert len(_curve(tmp_path / "two")) == summary["steps"]
    assert not (tmp_path / "two" / "error.json").exists()


def test_a_preempted_two_process_job_resumes_to_the_uninterrupted_curve(smoke_data, tmp_path):
    whole = _train("cifar10", smoke_data, tmp_path / "whole", 2, "train.epochs=3")
    assert whole.returncode == 0, whole.stderr[-2000:]
    # the scheduler's warning reaches both ranks after step 5: both checkpoint (one file, every rank's random
    # state), stop, and the next start resumes by itself (preempted.json) with the same overrides
    stopped = _train("cifar10", smoke_data, tmp_path / "run", 2, "train.epochs=3", *fault_at("SIGUSR2@5"),
                     env={"PYTHONPATH": str(REPO)})
    assert stopped.returncode != 0 and (tmp_path / "run" / "preempted.json").exists()
    assert len(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["rng"]) == 2
    again = _train("cifar10", smoke_data, tmp_path / "run", 2, "train.epochs=3")
    assert again.returncode == 0, again.stderr[-2000:]
    assert _curve(tmp_path / "run") == pytest.approx(_curve(tmp_path / "whole"), rel=1e-5)


@pytest.mark.parametrize("task", TASKS)
def test_batch_dims_split_every_tasks_batch_into_consistent_halves(task, smoke_data):
    cfg = compose_cfg([f"task={task}", "norm=rmsnorm", "preset=smoke", f"data_dir={smoke_data}", "logger=none"])
    built = build_task(cfg, torch.device("cpu"))
    batch = next(iter(built.batches(0, 0)))
    # batch_dims names each element's batch dimension: on the whole batch they all hold the same examples
    sizes = {t.shape[d] for t, d in zip(batch, built.batch_dims, strict=True)}
    assert len(sizes) == 1 and sizes.pop() > 1
    n = batch[0].shape[built.batch_dims[0]]
    halves = [distributed.shard(batch, built.batch_dims, distributed.Group(rank, 2)) for rank in (0, 1)]
    per_rank = []
    for half in halves:
        sizes = {t.shape[d] for t, d in zip(half, built.batch_dims, strict=True)}
        assert len(sizes) == 1
        per_rank.append(sizes.pop())
    assert sum(per_rank) == n and min(per_rank) >= n // 2


def test_a_global_batch_that_does_not_divide_is_refused_at_start_up():
    with pytest.raises(Exception, match="task.batch_size=9 is the global batch, split over 2 processes: it must be "
                                        "a multiple of 2"):
        distributed.check_batch_size(distributed.Group(0, 2), 9)
    distributed.check_batch_size(distributed.Group(0, 2), 8)


def test_a_short_last_batch_gives_every_rank_an_equal_non_empty_slice():
    x = torch.arange(10).reshape(5, 2)  # 5 examples in dimension 0
    t = torch.arange(15).reshape(3, 5)  # the same 5 examples, time-major
    halves = [distributed.shard((x, t), (0, 1), distributed.Group(rank, 2)) for rank in (0, 1)]
    assert [h[0][:, 0].tolist() for h in halves] == [[0, 2], [4, 6]]  # equal slices; the fifth left out
    assert [h[1][0].tolist() for h in halves] == [[0, 1], [2, 3]]
    single = [distributed.shard((x[:1], t[:, :1]), (0, 1), distributed.Group(rank, 3)) for rank in range(3)]
    assert all(s[0].tolist() == [[0, 1]] and s[1].shape == (3, 1) for s in single)  # no rank left empty

