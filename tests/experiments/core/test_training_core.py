"""The training core: resume after a crash, NaN losses, timing, W&B offline, and the command line."""

import json
import math

import pytest
import torch

from experiments.cifar10.task import Cifar10Task
from experiments.core.errors import NonFiniteLoss
from experiments.core.records import read_metrics
from experiments.core.training.run import run_training
from experiments.core.training.timing import StepTimer
from tests.conftest import Crash, compose_cfg, patch_train_step, run_script, tiny_cifar, tiny_cifar_cli


def patch_step(monkeypatch, at_call, before=None, after=None):
    return patch_train_step(monkeypatch, Cifar10Task, at_call, before, after)


def test_resume_after_a_crash_matches_an_uninterrupted_run(cifar_dir, tmp_path, monkeypatch):
    overrides = tiny_cifar(cifar_dir, "norm=rmsnorm", "train.epochs=4", "train.ckpt_every=4", "train.eval_every=6")
    whole = run_training(compose_cfg(overrides), tmp_path / "whole")

    def crash():
        raise Crash("pre-empted")

    real_step = patch_step(monkeypatch, 7, before=crash)  # after the checkpoint at step 4, mid-epoch
    with pytest.raises(Crash):
        run_training(compose_cfg(overrides), tmp_path / "split")
    assert not (tmp_path / "split" / "summary.json").exists()
    assert torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)["progress"]["step"] == 4

    monkeypatch.setattr(Cifar10Task, "train_step", real_step)
    resumed = run_training(compose_cfg([*overrides, "resume=true"]), tmp_path / "split")
    assert resumed["steps"] == whole["steps"] == 12
    for key, value in whole["metrics"].items():
        assert resumed["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6)
    assert [m["step"] for m in read_metrics(tmp_path / "split")] == list(range(1, 13))  # nothing logged twice
    # a finished run is left alone by resume
    again = run_training(compose_cfg([*overrides, "resume=true"]), tmp_path / "split")
    assert again["metrics"] == resumed["metrics"]


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(cifar_dir, tmp_path, monkeypatch):
    patch_step(monkeypatch, 4, after=lambda loss: loss * float("nan"))
    with pytest.raises(NonFiniteLoss, match=r"loss became nan by step 4.*last good checkpoint.*resume=true"):
        run_training(compose_cfg(tiny_cifar(cifar_dir, "norm=layernorm")), tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["progress"]["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["task"]["model"].values() if v.is_floating_point())


def test_timer_counts_only_steps_after_warmup():
    timer = StepTimer(torch.device("cpu"), warmup_steps=3)
    for i in range(10):
        timer.begin_step()
        timer.end_step()
        if i == 5:
            timer.pause()  # an evaluation: not timed
    timer.pause()
    assert timer.timed_steps == 7
    assert timer.train_seconds >= timer.timed_seconds > 0
    assert math.isclose(timer.sec_per_1k_steps, 1000 * timer.timed_seconds / 7)


def test_the_three_clocks_on_a_fake_clock(monkeypatch):
    """Steps only, training stretches (with batch building between steps) and the wall clock with evaluation,
    on a clock that moves only where this test says: 1 s per step, 0.5 s building each next batch, 10 s
    evaluating, after one warm-up step."""
    from experiments.core.training import timing

    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    timer = StepTimer(torch.device("cpu"), warmup_steps=1)
    for i in range(5):
        timer.begin_step()
        now[0] += 1.0  # the step
        timer.end_step()
        if i == 2:
            timer.pause()
            now[0] += 10.0  # an evaluation
            timer.account_gap()  # a checkpoint: the gap so far is saved
            now[0] += 2.0  # the checkpoint's write
        else:
            now[0] += 0.5  # the next batch (the last one: the loop's end)
    timer.pause()
    now[0] += 10.0  # the final evaluation
    timer.account_gap()
    assert timer.timed_steps == 4  # steps 2-5
    assert timer.step_sec_per_1k_steps == pytest.approx(1000.0)
    # stretches: steps 2-3 with one batch between (2.5 s), then steps 4-5 with two (3 s)
    assert timer.sec_per_1k_steps == pytest.approx(1000 * 5.5 / 4)
    # plus 12 s between the stretches and the 10 s final evaluation, but not the warm-up stretch's 0.5 s
    assert timer.wall_sec_per_1k_steps == pytest.approx(1000 * (5.5 + 12 + 10) / 4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_steps_only_clock_reads_events_without_a_sync_per_step():
    timer = StepTimer(torch.device("cuda"), warmup_steps=1)
    x = torch.randn(2048, 2048, device="cuda")
    for _ in range(6):
        timer.begin_step()
        x = (x @ x).tanh_()
        timer.end_step()
    assert len(timer._events) == 5  # recorded, not yet read: nothing waited for the GPU
    timer.pause()
    assert timer.timed_steps == 5 and not timer._events
    assert 0 < timer.step_sec_per_1k_steps <= timer.sec_per_1k_steps * 1.01


def test_wandb_logger_offline(cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg([*tiny_cifar(cifar_dir, "norm=rmsnorm"), "logger=wandb"])
    run_training(cfg, tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_wandb_logger_names_configs_and_tags(cifar_dir, tmp_path, monkeypatch):
    # what reaches W&B, captured at wandb.init (an offline run keeps it only in its binary log)
    import wandb

    class FakeRun:
        def __init__(self, **kwargs):
            self.init, self.logged, self.summary = kwargs, {}, {}

        def log(self, metrics, step):
            self.logged.update(metrics)

        def finish(self, exit_code=0):
            pass

    runs = []
    monkeypatch.setattr(wandb, "init", lambda **kw: runs.append(FakeRun(**kw)) or runs[-1])
    run_training(compose_cfg([*tiny_cifar(cifar_dir, "norm=rmsnorm"), "logger=wandb"]), tmp_path)
    (run,) = runs
    assert {"train/loss", "test/error"} <= set(run.logged)
    assert {"test/error", "time/sec_per_1k_steps", "time/sec_per_epoch"} <= set(run.summary)
    assert run.init["config"]["norm"] == "rmsnorm" and run.init["config"]["task"] == "cifar10"
    assert run.init["config"]["seed"] == 0 and "preset" in run.init["config"]
    assert {"cifar10", "rmsnorm", "seed0"} <= set(run.init["tags"])


def test_wandb_metric_names_are_the_same_across_tasks():
    from experiments.core.training.loggers import wandb_key

    assert wandb_key("train_loss") == "train/loss"
    assert wandb_key("eval/valid_error") == "val/error"  # reading
    assert wandb_key("eval/test_error") == "test/error"  # cifar10, reading
    assert wandb_key("eval/best_dev_image_rsum") == "val/best_image_rsum"  # retrieval
    assert wandb_key("eval/dev_bleu") == "val/bleu" and wandb_key("eval/test14_bleu") == "test/test14_bleu"
    assert wandb_key("timing/sec_per_1k_steps") == "time/sec_per_1k_steps"


# ---- the command line --------------------------------------------------------------------------------------


def test_cli_single_run_writes_summary(cifar_dir, tmp_path):
    out = tmp_path / "D"
    r = run_script("scripts/train.py", "task=cifar10", "norm=prmsnorm", *tiny_cifar_cli(cifar_dir),
                   f"hydra.run.dir={out}")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["norm"] == "prmsnorm" and summary["config"]["norm"]["p"] == 0.125


def test_cli_multirun_writes_one_summary_per_norm_and_survives_a_failed_job(cifar_dir, tmp_path):
    sweep = tmp_path / "sweep"
    r = run_script("scripts/train.py", "-m", "task=cifar10", "norm=rmsnorm,prmsnorm", "norm.p=0.125,0",
                   *tiny_cifar_cli(cifar_dir), f"hydra.sweep.dir={sweep}")
    # prmsnorm with p=0 is refused when its job builds the model: that job fails, the other three finish
    assert r.returncode == 1
    assert "1 run(s) failed" in r.stderr
    summaries = sorted(p.parent.name for p in sweep.rglob("summary.json"))
    assert len(summaries) == 3
    errors = list(sweep.rglob("error.json"))
    assert len(errors) == 1 and "0 < p <= 1" in json.loads(errors[0].read_text())["error"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["norm=rmsnrom"], "Available options in 'norm'"),
        (["norm=prmsnorm", "norm.p=0"], "pRMSNorm needs 0 < p <= 1"),
        (["norm=rmsnorm", "data_dir=/nonexistent/place"],
         "run `make data-cifar10 PRESET=paper DATA_DIR=/nonexistent/place`"),
        (["norm=rmsnorm", "task.batch_size=many"], "task=cifar10: its config does not fit"),
        (["norm=rmsnorm", "+task.batchsize=7"], "Key 'batchsize' not in 'Cifar10Config'"),
        (["norm=rmsnorm", "task.norms=[rmsnorm,rmsnrom]"], "task.norms lists rmsnrom"),
    ],
)
def test_cli_user_errors_are_short(cifar_dir, tmp_path, args, expected):
    overrides = {a.split("=", 1)[0]: a for a in [*tiny_cifar_cli(cifar_dir), *args]}  # a later key=value replaces
    r = run_script("scripts/train.py", "task=cifar10", *overrides.values(), f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode != 0
    text = r.stdout + r.stderr
    assert expected in text
    assert "Traceback" not in text and len(text.splitlines()) < 25


def test_sigterm_saves_a_checkpoint_and_resume_finishes_the_run(cifar_dir, tmp_path, monkeypatch):
    import os
    import signal

    from experiments.core.errors import Preempted

    overrides = tiny_cifar(cifar_dir, "norm=rmsnorm", "train.epochs=3", "train.ckpt_every=100", "train.eval_every=9")
    whole = run_training(compose_cfg(overrides), tmp_path / "whole")
    # what SLURM sends before pre-empting a job, during step 5
    real_step = patch_step(monkeypatch, 5, before=lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(Preempted, match="SIGTERM at step 5.*resume=true"):
        run_training(compose_cfg(overrides), tmp_path / "run")
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["progress"]["step"] == 5
    monkeypatch.setattr(Cifar10Task, "train_step", real_step)
    resumed = run_training(compose_cfg([*overrides, "resume=true"]), tmp_path / "run")
    for key, value in whole["metrics"].items():
        assert resumed["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone after the run
