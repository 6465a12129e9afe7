"""Bad input gets one clear line at start-up, and a fault mid-run loses nothing: the rows of docs/running.md's
"Bad input" table that are not tested beside their task (each row there names its test)."""

import errno
import json
import os

import numpy as np
import pytest
import torch
from hydra.errors import MissingConfigException

from experiments.core import atomic
from experiments.core.errors import MissingData, UserError
from experiments.core.records import MetricsFile, read_metrics
from experiments.core.training.run import run_training
from tests.conftest import compose_cfg, tiny_cifar


@pytest.mark.parametrize("override, message", [
    ("train.epochs=-1", r"train.epochs=-1(\.0)?: must be positive"),
    ("train.epochs=0", r"train.epochs=0(\.0)?: must be positive"),
    ("train.max_steps=0", r"train.max_steps=0: must be positive"),
    ("train.eval_every=0", r"train.eval_every=0: must be a whole number of steps >= 1"),
    ("task.batch_size=0", r"task.batch_size=0: batch sizes, learning rates and accumulation counts must be positive"),
    ("task.batch_size=-5", r"task.batch_size=-5: batch sizes, learning rates and accumulation counts must be positive"),
    ("task.optim.lr_by_norm.default=-1", r"task.optim.lr_by_norm.default=-1.0: .*must be positive"),
    ("task.optim.lr_by_norm.none=0", r"task.optim.lr_by_norm.none=0.0: .*must be positive"),
])
def test_settings_that_cannot_train_fail_before_any_data_is_read(override, message, tmp_path):
    # data_dir points nowhere: the settings' error must come first, not the missing data
    cfg = compose_cfg(tiny_cifar(tmp_path / "no-data", "norm=rmsnorm", override))
    with pytest.raises(UserError, match=message):
        run_training(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("task", ["translation", "reading", "retrieval"])
def test_a_negative_learning_rate_is_refused_for_every_task(task, tmp_path):
    cfg = compose_cfg([f"task={task}", "norm=rmsnorm", "preset=smoke", "logger=none", "task.optim.lr=-1",
                       f"data_dir={tmp_path}"])
    with pytest.raises(UserError, match=rf"task={task}: task.optim.lr=-1.0: .*must be positive"):
        run_training(cfg, tmp_path / "run")


def test_an_unknown_task_lists_the_tasks():
    with pytest.raises(MissingConfigException, match="Could not find 'task/cifar100'"):
        compose_cfg(["task=cifar100"])


def test_the_disk_filling_during_a_checkpoint_keeps_the_previous_one_and_resume_finishes(cifar_dir, tmp_path,
                                                                                         monkeypatch):
    overrides = tiny_cifar(cifar_dir, "norm=rmsnorm", "train.epochs=4", "train.ckpt_every=4", "train.eval_every=6")
    whole = run_training(compose_cfg(overrides), tmp_path / "whole")
    real_fsync, calls = atomic.os.fsync, []

    def fsync_until_full(fd):  # the second checkpoint's write runs out of space
        if "checkpoint.pt" in os.readlink(f"/proc/self/fd/{fd}"):
            calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync_until_full)
    with pytest.raises(UserError, match=r"could not write .*checkpoint.pt at step 8 \(No space left on device\); "
                                        r"the previous version of it and every finished result are intact"):
        run_training(compose_cfg(overrides), tmp_path / "run")
    monkeypatch.setattr(atomic.os, "fsync", real_fsync)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["progress"]["step"] == 4
    assert not list((tmp_path / "run").glob(".*.tmp"))  # no half-written file left behind
    resumed = run_training(compose_cfg([*overrides, "resume=true"]), tmp_path / "run")
    for key, value in whole["metrics"].items():
        assert resumed["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6)


def test_the_disk_filling_during_the_summary_keeps_the_checkpoint(cifar_dir, tmp_path, monkeypatch):
    overrides = tiny_cifar(cifar_dir, "norm=rmsnorm")

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("experiments.core.records.save_json", full)
    with pytest.raises(UserError, match=r"could not write .*summary.json .*Free space, then rerun with resume=true"):
        run_training(compose_cfg(overrides), tmp_path / "run")
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["progress"]["step"] == 6


def test_a_metrics_line_cut_short_is_dropped_on_read_and_resume(tmp_path):
    metrics = MetricsFile(tmp_path)
    for step in (1, 2, 3):
        metrics.append({"step": step, "train_loss": 1.0 / step})
    with metrics.path.open("a") as f:
        f.write('{"step": 4, "train_lo')  # the process died (or the disk filled) mid-append
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    metrics.truncate_after(2)  # what a resume from step 2 does
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    assert metrics.path.read_text().endswith("}\n")


def test_a_malformed_translation_file_names_the_file(tmp_path):
    from experiments.translation import data as D

    (tmp_path / "train.jsonl").write_text(json.dumps({"translation": {"en": "a house.", "de": "ein haus."}}) +
                                          "\n\n{not json\n")
    with pytest.raises(MissingData, match=r"train.jsonl could not be read \(ArrowInvalid: JSON parse error"):
        D.read_text(tmp_path, "train.jsonl", "en", "de")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(MissingData, match=r"broken.parquet is not a readable parquet file"):
        D.read_text(tmp_path, "broken.parquet", "en", "de")


def test_truncated_image_features_are_a_clear_error(tmp_path):
    from experiments.retrieval import data as D

    path = D.feature_path(tmp_path, "train")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.zeros((10, 4), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:150])  # the header and part of the rows
    with pytest.raises(MissingData, match=r"is not a readable .npy array.*make data-retrieval"):
        D.read_features(tmp_path, "train", 10, 4, "make data-retrieval")


def test_a_truncated_cifar_batch_is_a_clear_error(tmp_path, rng):
    from experiments.cifar10.data import load_cifar10
    from experiments.cifar10.pickle_format import write_cifar_folder

    x = rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8)
    write_cifar_folder(tmp_path, x, np.arange(20) % 10, x, np.arange(20) % 10)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[: len(batch.read_bytes()) // 2])
    with pytest.raises(MissingData, match="corrupt.*make data-cifar10"):
        load_cifar10(tmp_path, 1e-5, None, None, "make data-cifar10")


def test_a_fresh_start_does_not_append_to_an_earlier_attempts_curve(cifar_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # what a run killed before its first checkpoint leaves: records and a line cut short
    (run / "metrics.jsonl").write_text('{"step": 1, "train_loss": 9.0}\n{"step": 2, "train_lo')
    for resume in ("false", "true"):  # resume=true finds no checkpoint: a fresh start as well
        summary = run_training(compose_cfg(tiny_cifar(cifar_dir, "norm=rmsnorm", f"resume={resume}")), run)
        steps = [r["step"] for r in read_metrics(run)]
        assert steps == list(range(1, summary["steps"] + 1))
        (run / "summary.json").unlink()
        (run / "checkpoint.pt").unlink()
