"""Timing several variants of one workload (in the library, so that it installed alone can measure a user's
model: `rmsnorm.measure`) so that a 10-25% difference stands out from a shared machine's
drift: the variants run round-robin (a fresh random order each round), each round times a few steps of
every variant after warm-up, and the speed-up comes with a t interval over the rounds' paired ratios."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rmsnorm.stats import mean_interval, within_noise


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read after it counts that work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: how a speed-up and its interval are computed, for the tables that quote them
RATIO_RULE = "the geometric mean over rounds of each round's paired time ratio, with a 95% t interval"


@dataclass
class RoundTimes:
    """Seconds per step of each variant, one entry per round."""

    per_round: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return float(torch.tensor(self.per_round[name]).median())


def time_interleaved(
    steps: dict[str, Callable[[], object]],
    device: torch.device,
    rounds: int,
    steps_per_round: int,
    warmup_steps: int,
    seed: int = 0,
    on_round: Callable[[int], None] | None = None,
) -> RoundTimes:
    """Warm every variant up, then `rounds` rounds; in each, every variant (in a shuffled order) runs
    `steps_per_round` steps between two synchronised clock reads."""
    for step in steps.values():
        for _ in range(warmup_steps):
            step()
    synchronize(device)
    order = list(steps)
    shuffle = random.Random(seed)
    times = RoundTimes({name: [] for name in order})
    for r in range(rounds):
        shuffle.shuffle(order)
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(steps_per_round):
                steps[name]()
            synchronize(device)
            times.per_round[name].append((time.perf_counter() - start) / steps_per_round)
        if on_round is not None:
            on_round(r)
    return times


def _log_ratios(reference: list[float], other: list[float]) -> list[float]:
    """log(T_other / T_ref) per round: paired, so a round's drift (both variants slower) cancels."""
    if len(reference) != len(other) or len(reference) < 2:
        raise ValueError("need the same number (>= 2) of rounds for both variants")
    return [math.log(o / r) for r, o in zip(reference, other, strict=True)]


def speedup(reference: list[float], other: list[float]) -> float:
    """The paper's speed-up, (T_ref - T_other) / T_ref, with T_other / T_ref the geometric mean over rounds of
    each round's ratio."""
    ratios = _log_ratios(reference, other)
    return 1 - math.exp(sum(ratios) / len(ratios))


def speedup_interval(reference: list[float], other: list[float]) -> tuple[float, float]:
    """The 95% t interval of that speed-up (over the rounds' log ratios): symmetric around the estimate on the
    log scale, so the estimate always lies inside it."""
    _, lo, hi = mean_interval(_log_ratios(reference, other))
    return 1 - math.exp(hi), 1 - math.exp(lo)


def describe(estimate: float, interval: tuple[float, float]) -> str:
    """'+24.7% [+20.1, +29.0]', or the same followed by 'within noise' when the interval spans 0 (the one
    rule of rmsnorm/stats.py)."""
    lo, hi = interval
    text = f"{100 * estimate:+.1f}% [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return text + (" within noise" if within_noise((lo, hi)) else "")
