"""Wall-clock time of training steps only: evaluation, logging and checkpoints are paused out, the first
steps after (re)start are warm-up and not counted, and CUDA is synchronised at every boundary."""

from __future__ import annotations

import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    def __init__(self, device: torch.device, warmup_steps: int):
        self.device = device
        self.warmup_steps = int(warmup_steps)
        self.steps_since_start = 0  # in this process: warm-up restarts after a resume
        self.timed_steps = 0
        self.timed_seconds = 0.0
        self.train_seconds = 0.0  # every training step, warm-up included: the x-axis of loss-vs-time curves
        self._t0: float | None = None
        self._timing = False

    def begin_step(self) -> None:
        if self._t0 is None:
            synchronize(self.device)
            self._t0 = time.perf_counter()
            self._timing = self.steps_since_start >= self.warmup_steps
            self._segment_steps = 0

    def end_step(self) -> None:
        self.steps_since_start += 1
        self._segment_steps += 1
        if not self._timing and self.steps_since_start >= self.warmup_steps:
            self.pause()  # close the warm-up segment so timing starts on a clean boundary

    def pause(self) -> None:
        if self._t0 is None:
            return
        synchronize(self.device)
        elapsed = time.perf_counter() - self._t0
        self._t0 = None
        self.train_seconds += elapsed
        if self._timing:
            self.timed_seconds += elapsed
            self.timed_steps += self._segment_steps

    @property
    def sec_per_1k_steps(self) -> float | None:
        return 1000.0 * self.timed_seconds / self.timed_steps if self.timed_steps else None

    def state_dict(self) -> dict:
        return {
            "timed_steps": self.timed_steps,
            "timed_seconds": self.timed_seconds,
            "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        self.timed_steps = state["timed_steps"]
        self.timed_seconds = state["timed_seconds"]
        self.train_seconds = state["train_seconds"]
