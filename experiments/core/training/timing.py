"""Three clocks over the steps after warm-up (the first steps after each (re)start are not counted), CUDA
synchronised at every boundary:

- steps only: the time inside the task's training steps (the norm's cost): on the CPU the host clock around
  each, on CUDA events around each read at the next boundary, so training never waits for the GPU per step;
- training: the stretches of consecutive steps, so building and copying the next batch is inside, while
  evaluation, logging and checkpoints are paused out (`sec_per_1k_steps`, the suite's time column);
- wall clock: training plus everything between its stretches (evaluation, checkpoints), as the paper's
  scripts time a run (the weight-norm code's epoch includes its test pass)."""

from __future__ import annotations

import time

import torch

from rmsnorm.interleaved import synchronize


class StepTimer:
    def __init__(self, device: torch.device, warmup_steps: int):
        self.device = device
        self.warmup_steps = int(warmup_steps)
        self.steps_since_start = 0  # in this process: warm-up restarts after a resume
        self.timed_steps = 0
        self.timed_seconds = 0.0
        self.train_seconds = 0.0  # every training step, warm-up included: the x-axis of loss-vs-time curves
        self.step_seconds = 0.0  # inside the timed steps only
        self.gap_seconds = 0.0  # between timed stretches: evaluation, logging, checkpoints
        self._t0: float | None = None
        self._step_t0 = 0.0
        self._events: list = []  # CUDA: (start, end) events of the stretch's timed steps, read at pause()
        self._last_pause: float | None = None  # the end of the last timed stretch, in this process
        self._timing = False

    def begin_step(self) -> None:
        if self._t0 is None:
            synchronize(self.device)
            self._t0 = time.perf_counter()
            self._timing = self.steps_since_start >= self.warmup_steps
            self._segment_steps = 0
            self.account_gap()
        if self._timing and self.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self._events.append((start, torch.cuda.Event(enable_timing=True)))
        self._step_t0 = time.perf_counter()

    def end_step(self) -> None:
        if self._timing:
            if self._events:
                self._events[-1][1].record()
            else:
                self.step_seconds += time.perf_counter() - self._step_t0
        self.steps_since_start += 1
        self._segment_steps += 1
        if not self._timing and self.steps_since_start >= self.warmup_steps:
            self.pause()  # close the warm-up segment so timing starts on a clean boundary

    def account_gap(self) -> None:
        """Add the time since the last timed stretch ended (evaluation, checkpoints) to the wall clock; the
        trainer calls it before a checkpoint and at the end, so the saved and final figures include it."""
        if self._last_pause is not None:
            now = time.perf_counter()
            self.gap_seconds += now - self._last_pause
            self._last_pause = now if self._t0 is None else None

    def pause(self) -> None:
        if self._t0 is None:
            return
        synchronize(self.device)
        now = time.perf_counter()
        elapsed = now - self._t0
        # synchronised above: every recorded event has completed
        self.step_seconds += sum(start.elapsed_time(end) for start, end in self._events) / 1000.0
        self._events.clear()
        self._t0 = None
        self.train_seconds += elapsed
        if self._timing:
            self.timed_seconds += elapsed
            self.timed_steps += self._segment_steps
            self._last_pause = now

    def _per_1k(self, seconds: float) -> float | None:
        return 1000.0 * seconds / self.timed_steps if self.timed_steps else None

    @property
    def sec_per_1k_steps(self) -> float | None:
        return self._per_1k(self.timed_seconds)

    @property
    def step_sec_per_1k_steps(self) -> float | None:
        return self._per_1k(self.step_seconds)

    @property
    def wall_sec_per_1k_steps(self) -> float | None:
        return self._per_1k(self.timed_seconds + self.gap_seconds)

    def state_dict(self) -> dict:
        return {
            "timed_steps": self.timed_steps,
            "timed_seconds": self.timed_seconds,
            "train_seconds": self.train_seconds,
            "step_seconds": self.step_seconds,
            "gap_seconds": self.gap_seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        self.timed_steps = state["timed_steps"]
        self.timed_seconds = state["timed_seconds"]
        self.train_seconds = state["train_seconds"]
        # checkpoints from before these clocks: unknown, counted from here
        self.step_seconds = state.get("step_seconds", 0.0)
        self.gap_seconds = state.get("gap_seconds", 0.0)
