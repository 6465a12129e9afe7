"""One training run from a composed config: build the parts, train, write summary.json."""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from experiments.core.atomic import save_json, write_or_explain
from experiments.core.convergence import convergence
from experiments.core.errors import UserError
from experiments.core.identity import IDENTITY_FILE, read_folder_identity, refusal, run_identity
from experiments.core.machine import machine_name
from experiments.core.records import (
    ERROR_FILE,
    PREEMPTED_FILE,
    SUMMARY_FILE,
    read_metrics,
    read_summary,
    write_summary,
)
from experiments.core.training import distributed, seeding
from experiments.core.training.config import differences_from_paper, norm_spec, typed_task_config
from experiments.core.training.loggers import NullLogger
from experiments.core.training.task import Task
from experiments.core.training.trainer import Trainer, TrainSettings
from rmsnorm.kernels import dispatch
from rmsnorm.norms import partial_statistics

log = logging.getLogger(__name__)


def pick_device(name: str, group: distributed.Group = distributed.SINGLE) -> torch.device:
    """The device of this process; under torchrun each process takes the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} was asked for but torch sees no CUDA device; use device=auto or device=cpu")
    if name == "cuda" and group.enabled:
        return torch.device("cuda", group.local_rank)
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    return f"{device.type}:{machine_name(device)}"


def run_info(cfg: DictConfig, sweep: str) -> dict:
    # the seed as given: a wrong one (seed=abc) is reported by check_run_types, not by a crash here
    return {"task": cfg.task.name, "norm": cfg.norm.name, "seed": cfg.seed, "preset": cfg.preset.name,
            "sweep": sweep}


def check_run_types(cfg: DictConfig) -> None:
    """Top-level values of the wrong type (seed=abc, resume=maybe) in one line, before anything is built."""
    expected = {"seed": (int, "a whole number"), "resume": (bool, "true or false"),
                "resume_anyway": (bool, "true or false")}
    for key, (kind, words) in expected.items():
        value = cfg.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise UserError(f"{key}={value}: must be {words}")


def train_settings(cfg: DictConfig) -> TrainSettings:
    """The loop's settings, typed by TrainSettings' fields: `train.epochs=ten` fails in one line."""
    try:
        typed = OmegaConf.merge(OmegaConf.structured(TrainSettings), OmegaConf.to_container(cfg.train, resolve=True))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "train"
        value = getattr(exc, "value", None)
        raise UserError(f"train.{key}={value}: {str(exc).splitlines()[0]}") from exc
    return TrainSettings(**OmegaConf.to_container(typed))


def _check_same_run(cfg: DictConfig, run_dir: Path, identity: dict) -> None:
    """A resume into a folder that another run's config wrote is refused (unless resume_anyway=true)."""
    saved = read_folder_identity(run_dir)
    if saved is None or cfg.get("resume_anyway"):
        return
    message = refusal(saved, identity, f"the run in {run_dir}")
    if message:
        raise UserError(message)


def run_training(cfg: DictConfig, run_dir: Path, sweep: str = "single") -> dict:
    run_dir = Path(run_dir)
    check_run_types(cfg)
    identity = run_identity(cfg)
    resuming = cfg.resume or (run_dir / PREEMPTED_FILE).exists()
    if resuming:
        _check_same_run(cfg, run_dir, identity)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.resume and (run_dir / SUMMARY_FILE).exists():
        log.info("%s already finished: resume=true leaves it as it is", run_dir)
        return read_summary(run_dir)

    group = distributed.from_environment()
    device = pick_device(cfg.device, group)
    distributed.init(group, device)
    try:
        return _train(cfg, run_dir, sweep, group, device, {**identity, "device": describe_device(device)})
    finally:
        distributed.shutdown()


def _train(cfg: DictConfig, run_dir: Path, sweep: str, group: distributed.Group, device: torch.device,
           identity: dict) -> dict:
    settings = train_settings(cfg)  # its mistakes fail here, before any data is read
    seeding.seed_everything(int(cfg.seed))
    task = build_task(cfg, device)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    task.check_processes(group)
    if group.enabled:  # dropout and noise draws of their own per rank
        seeding.seed_everything(int(cfg.seed) * 1_000_003 + group.rank)
    differences = differences_from_paper(cfg)
    for line in differences:
        log.info("differs from preset=paper: %s", line)

    info = run_info(cfg, sweep)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    logger = hydra.utils.instantiate(cfg.logger) if group.is_main else NullLogger()
    logger.start(info, resolved, run_dir)
    summary = None
    if group.is_main:
        save_json(identity, run_dir / IDENTITY_FILE)
    try:
        trainer = Trainer(task, settings, run_dir, device, logger, group, identity,
                          resume_anyway=bool(cfg.get("resume_anyway")))
        # a run stopped by a scheduler's signal resumes when it is started again (a requeued SLURM job keeps
        # its overrides, resume=false among them)
        if cfg.resume or (run_dir / PREEMPTED_FILE).exists():
            trainer.try_resume()
        final = trainer.fit()
        summary = make_summary(info, task, trainer, final, device, resolved, differences, identity)
        if group.is_main:
            write_or_explain(lambda: write_summary(run_dir, summary), run_dir / SUMMARY_FILE,
                             f"at step {trainer.progress.step}")
            for stale in (PREEMPTED_FILE, ERROR_FILE):  # what an earlier, stopped attempt left
                (run_dir / stale).unlink(missing_ok=True)
        log.info("%s/%s seed %s: %s", info["task"], info["norm"], info["seed"], format_metrics(summary))
    finally:
        logger.finish(summary, exit_code=0 if summary is not None else 1)
    return summary


def build_task_class(cfg: DictConfig) -> type[Task]:
    """The Task class a config's builder names (no data read, nothing built)."""
    return hydra.utils.instantiate(cfg.task.builder).func


def build_task(cfg: DictConfig, device: torch.device) -> Task:
    """The task as its config's builder makes it (Hydra, `_partial_: true`), after checking the config
    against the task's schema and the norm against the registry: mistakes fail before any data is read."""
    make_task = hydra.utils.instantiate(cfg.task.builder)
    task_class = make_task.func
    task_cfg = typed_task_config(task_class.Config, cfg.task)
    norm = norm_spec(cfg)
    if norm.name not in task_cfg.norms:
        log.info("norm=%s is not one of the paper's rows for task=%s (%s); running it all the same",
                 norm.name, task_cfg.name, ", ".join(task_cfg.norms))
    return make_task(cfg=task_cfg, norm=norm, data_dir=Path(cfg.data_dir), device=device, seed=int(cfg.seed))


def prepare_task_data(cfg: DictConfig) -> Path:
    """Write what training reads for this config's task and preset (`scripts/prepare.py`); returns the folder."""
    make_task = hydra.utils.instantiate(cfg.task.builder)
    task_cfg = typed_task_config(make_task.func.Config, cfg.task)
    make_task.func.prepare(task_cfg, Path(cfg.data_dir))
    return Path(cfg.data_dir) / task_cfg.data_subdir


def at_best(task, records: list[dict]) -> dict:
    """{"at_best_<dev metric>": the step and every evaluated metric of the evaluation with the best validation
    score}, for tasks that name one (`Task.selection_metric`): Nematus keeps the best checkpoint by validation,
    so the paper's test score is the one at the best dev score, not necessarily the last."""
    key = getattr(task, "selection_metric", None)
    evals = [r for r in records if f"eval/{key}" in r]
    if key is None or not evals:
        return {}
    pick = min if task.lower_is_better else max
    best = pick(evals, key=lambda r: r[f"eval/{key}"])  # the earliest of equal scores
    return {f"at_best_{key}": {"step": best["step"],
                               **{k.removeprefix("eval/"): v for k, v in best.items() if k.startswith("eval/")}}}


def make_summary(info: dict, task, trainer: Trainer, final: dict, device: torch.device, config: dict,
                 differences: list[str], identity: dict | None = None) -> dict:
    timing = {
        # steps of the whole job: under torchrun every rank steps together, each on its slice of the batch
        "processes": trainer.group.world,
        # three clocks (experiments/core/training/timing.py): training with its data pipeline (the suite's column),
        # the steps alone (the norm's cost), and the wall clock with evaluation (the paper's scripts' measure)
        "sec_per_1k_steps": trainer.timer.sec_per_1k_steps,
        "step_sec_per_1k_steps": trainer.timer.step_sec_per_1k_steps,
        "wall_sec_per_1k_steps": trainer.timer.wall_sec_per_1k_steps,
        "timed_steps": trainer.timer.timed_steps,
        "warmup_steps": trainer.settings.timing_warmup,
        "train_seconds": trainer.timer.train_seconds,
    }
    records = read_metrics(trainer.run_dir) if trainer.group.is_main else []
    unit = task.paper_time_unit()
    if unit is not None and timing["sec_per_1k_steps"] is not None:
        name, steps = unit
        for clock in ("", "step_", "wall_"):
            timing[clock + name] = timing[clock + "sec_per_1k_steps"] * steps / 1000.0
    return {
        "task": info["task"],
        "norm": info["norm"],
        "seed": info["seed"],
        "preset": info["preset"],
        "device": describe_device(device),
        "status": "finished",
        "steps": trainer.progress.step,
        "epochs": trainer.progress.step / task.steps_per_epoch,
        "primary_metric": task.primary_metric,
        "lower_is_better": task.lower_is_better,
        "norm_eps": task.norm.eps,  # the eps the norms were built with (task.norm_eps, norm.eps or the default)
        "norm_impl": task.norm.impl,  # fused kernels, or the composite ops the paper's frameworks ran
        "metrics": final,
        **at_best(task, records),
        # did the training loss leave its start (experiments/core/convergence.py; the report marks runs that did not)
        "convergence": convergence(records),
        "timing": timing,
        "differs_from_paper": differences,
        "data": task.data_facts(),
        # what each pRMSNorm layer's statistic was taken from (k = int(p * d)): small widths leave few features
        "partial_statistics": partial_statistics(task.model),
        **task.summary_extras(),
        # which implementation each norm took (CPU kernel or reference; on CUDA the measured choice per bucket)
        "kernels": dispatch.describe(),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        # what makes this run its table's row, and what produced it (experiments/core/identity.py)
        "config_hash": (identity or {}).get("config_hash"),
        "commit": (identity or {}).get("commit"),
        "identity": {k: v for k, v in (identity or {}).items() if k != "config"},
        "config": config,
    }


def format_metrics(summary: dict) -> str:
    parts = [f"{k}={v:.4g}" for k, v in summary["metrics"].items()]
    spk = summary["timing"]["sec_per_1k_steps"]
    if spk is not None:
        parts.append(f"sec_per_1k_steps={spk:.3g}")
    return " ".join(parts)
