"""What a task gives the training loop, and the keys its config must define.

A task owns its data, model, optimiser, loss and metrics; the loop owns time, order, checkpoints and records,
and the optimiser step itself (`experiments/core/training/stepping.py`: backward, clipping, accumulation, DDP).
Its data is prepared before training (`scripts/prepare.py`, `Task.prepare`); the constructor only reads.
"""

from __future__ import annotations

import abc
import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING
from torch import nn

from experiments.core.training import distributed
from rmsnorm import NormSpec

log = logging.getLogger(__name__)


@dataclass
class TaskConfig:
    """The keys every task's config defines (`configs/task/<task>.yaml`); a task's schema adds its own."""

    name: str = MISSING
    builder: Any = MISSING  # {_target_: the Task class, _partial_: true}: Hydra builds it
    norms: list[str] = MISSING  # the rows of the paper's table: what `make replicate-<task>` sweeps
    data_subdir: str = MISSING  # the task's folder under data_dir
    make_target: str = MISSING  # what prepares the real data, named in errors
    primary_metric: str = MISSING  # the metric the report tables lead with
    batch_size: int = MISSING
    # 1: a DataLoader worker builds the training batches beside the model, pinned for the copy to the GPU
    # (the paper presets of the tasks that build batches in Python); 0: in the training process (CPU runs)
    loader_workers: int = MISSING
    # eps of each norm in the code the paper ran for this task (norm name -> eps), used unless norm.eps is set
    norm_eps: dict[str, float] = MISSING


class Task(abc.ABC):
    #: the task's config schema, checked at start-up against configs/task/<task>.yaml and its presets
    Config: type[TaskConfig] = TaskConfig
    lower_is_better: bool = True
    #: the validation metric that picks the best evaluation (the summary's at_best_<metric>); None: the last
    selection_metric: str | None = None
    #: each batch element's batch dimension, for splitting a global batch over torchrun's processes
    #: (time-major sequences carry the batch in dimension 1)
    batch_dims: tuple[int, ...] = (0, 0)
    model: nn.Module
    optimizer: torch.optim.Optimizer

    def __init__(self, cfg, norm: NormSpec, data_dir: Path, device: torch.device, seed: int):
        self._setup(cfg, norm, device, seed)
        self.root = Path(data_dir) / cfg.data_subdir
        self.load_data()
        self.build_model()

    def _setup(self, cfg, norm: NormSpec, device: torch.device, seed: int) -> None:
        from experiments.core.training.stepping import check_clip_rule

        self.cfg, self.norm, self.device, self.seed = cfg, norm, device, seed
        self.primary_metric = cfg.primary_metric
        self.batch_size = int(cfg.batch_size)
        # read once (the step would otherwise read the config on every step); a misspelt rule fails here
        self.clip = self.clip_rule()
        check_clip_rule(self.clip[0], cfg.name)

    # ---- data, prepared once before training --------------------------------------------------------------
    @classmethod
    def prepare(cls, cfg, data_dir: Path, download: bool = True) -> None:
        """Write everything training reads into data_dir/<data_subdir>. Safe to run from several processes
        at once: they take turns on a lock, and each file appears atomically."""
        root = Path(data_dir) / cfg.data_subdir
        with folder_lock(root):
            cls.prepare_data(cfg, root, download)

    @classmethod
    @abc.abstractmethod
    def prepare_data(cls, cfg, root: Path, download: bool) -> None:
        """Generate (demo, smoke) or download (paper) the data set and derive what training needs; skip what
        is there already."""

    @abc.abstractmethod
    def load_data(self) -> None:
        """Read the prepared files under self.root; a MissingData error naming the command when absent."""

    @abc.abstractmethod
    def build_model(self) -> None:
        """self.model and self.optimizer from the config and the norm."""

    def check_processes(self, group) -> None:
        """Start-up check that each global batch splits evenly over torchrun's processes."""
        distributed.check_batch_size(group, self.batch_size)

    def data_facts(self) -> dict:
        """What the run trained and evaluated on (sizes), for the summary."""
        return {}

    # ---- timing without data (`make bench-tasks`) -----------------------------------------------------------
    @classmethod
    def for_timing(cls, cfg, norm: NormSpec, device: torch.device, seed: int = 0) -> Task:
        """The model and optimiser of this config without any data, for timing steps on synthetic batches."""
        task = cls.__new__(cls)
        task._setup(cfg, norm, device, seed)
        task.assume_paper_data()
        task.build_model()
        return task

    def assume_paper_data(self) -> None:  # noqa: B027 - optional hook
        """Set what build_model would read from the data (a vocabulary size) to the config's values."""

    def synthetic_batch(self, scale: float, generator: torch.Generator) -> Any:
        raise NotImplementedError(f"{type(self).__name__} has no synthetic batch for timing")

    def describe_batch(self, scale: float) -> str:
        return ""

    # ---- the loop's side -----------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def steps_per_epoch(self) -> int: ...

    #: the paper's time unit for this task and the steps in one at the paper's batch: the one home of this fact
    #: (summaries, bench-tasks, dashboards read it); tasks whose unit is not 1k steps override it
    PAPER_TIME_UNIT: tuple[str, int] = ("sec_per_1k_steps", 1000)
    #: which of a run's clocks (experiments/core/training/timing.py) the paper's time matches, the report's column
    #: beside the paper's: "train" (the steps with their batch building, `sec_per_...`), "step" (the steps alone,
    #: `step_sec_per_...`) or "wall" (with evaluation, `wall_sec_per_...`)
    PAPER_CLOCK: str = "train"

    def paper_time_unit(self, batch_scale: float = 1.0) -> tuple[str, float] | None:
        """(name, steps in one unit) for this task at its batch (`batch_scale`: the timed batch over the
        config's); None where the unit is 1k steps, which every summary gives anyway."""
        name, steps = self.PAPER_TIME_UNIT
        return None if name == "sec_per_1k_steps" else (name, steps)

    def on_epoch_start(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Set epoch-based schedules (learning rate, momentum). Called again after a resume, so idempotent."""

    @abc.abstractmethod
    def batches(self, epoch: int, start: int) -> Iterator[Any]:
        """The epoch's training batches from index `start`, in an order fixed by (seed, epoch)."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The loss of one (micro-)batch through `model` (the task's model, or its DDP wrapper under torchrun),
        scaled so that the gradients of a step's micro-batches add up to the step's."""

    def step_batches(self, batch: Any) -> list[Any]:
        """The micro-batches of one optimiser step (gradient accumulation); the whole batch by default."""
        return [batch]

    def clip_rule(self) -> tuple[str, float | None]:
        """(rule, bound) of gradient clipping: `task.optim.clip` and `task.optim.clip_norm` where the config has
        them (stepping.CLIP_RULES), else none."""
        optim = getattr(self.cfg, "optim", None)
        if optim is None or optim.get("clip_norm") is None:
            return "none", None
        return str(optim.get("clip", "global")), float(optim.clip_norm)

    def train_step(self, batch: Any, model: nn.Module | None = None) -> torch.Tensor:
        """One optimiser step (`stepping.optimizer_step`); returns the detached loss (a tensor: no host sync)."""
        from experiments.core.training.stepping import optimizer_step

        return optimizer_step(self, self.model if model is None else model, batch)

    @abc.abstractmethod
    def evaluate(self) -> dict[str, float]: ...

    def summary_extras(self) -> dict:
        """Task-specific facts for summary.json beyond the metrics (e.g. the BLEU signature)."""
        return {}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


@contextmanager
def folder_lock(root: Path):
    """An exclusive lock on root/.prepare.lock for the duration (processes on one machine take turns)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".prepare.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
