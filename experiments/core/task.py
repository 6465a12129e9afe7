"""What a task gives the training loop. A task owns its data, model, optimiser and metrics; the loop owns
time, order, checkpoints and records."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class Task(abc.ABC):
    #: name of the metric the report tables lead with, and whether lower is better
    primary_metric: str = "loss"
    lower_is_better: bool = True
    #: the paper's own time unit for this task, as (name, number of steps it stands for); None: steps only
    model: nn.Module
    optimizer: torch.optim.Optimizer

    @property
    @abc.abstractmethod
    def steps_per_epoch(self) -> int: ...

    def paper_time_unit(self) -> tuple[str, float] | None:
        """(name, steps in one unit), e.g. ("sec_per_epoch", 500) for CIFAR-10 at batch 100."""
        return None

    def on_epoch_start(self, epoch: int) -> None:  # noqa: B027 - optional hook
        """Set epoch-based schedules (learning rate, momentum). Called again after a resume, so idempotent."""

    @abc.abstractmethod
    def batches(self, epoch: int, start: int) -> Iterator[Any]:
        """The epoch's training batches from index `start`, in an order fixed by (seed, epoch)."""

    @abc.abstractmethod
    def train_step(self, batch: Any) -> torch.Tensor:
        """One optimiser step; returns the detached loss (a tensor: no host sync on the hot path)."""

    @abc.abstractmethod
    def evaluate(self) -> dict[str, float]: ...

    def summary_extras(self) -> dict:
        """Task-specific facts for summary.json beyond the metrics (e.g. the BLEU signature)."""
        return {}

    def describe_shrinks(self) -> list[str]:
        """What a demo preset shrank against the paper's setting, for the log and the summary."""
        return []

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
