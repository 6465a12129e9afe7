"""Timing several variants of one workload so that a 10-25% difference stands out from a shared machine's
drift: the variants run round-robin (a fresh random order each round), each round times a few steps of
every variant after warm-up, and the speed-up comes with a bootstrap interval over rounds."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from experiments.core.training.timing import synchronize


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


def speedup(reference: list[float], other: list[float]) -> float:
    """The paper's speed-up, (T_ref - T_other) / T_ref, on medians."""
    ref, oth = float(torch.tensor(reference).median()), float(torch.tensor(other).median())
    return (ref - oth) / ref


def speedup_interval(reference: list[float], other: list[float], level: float = 0.95, samples: int = 2000,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap over rounds, paired (a resampled round keeps both variants' times from it)."""
    ref, oth = torch.tensor(reference, dtype=torch.float64), torch.tensor(other, dtype=torch.float64)
    if len(ref) != len(oth) or len(ref) < 2:
        raise ValueError("need the same number (>= 2) of rounds for both variants")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(ref), (samples, len(ref)), generator=g)
    r, o = ref[idx].median(dim=1).values, oth[idx].median(dim=1).values
    stats = ((r - o) / r).sort().values
    lo = stats[int((1 - level) / 2 * (samples - 1))]
    hi = stats[int((1 + level) / 2 * (samples - 1))]
    return float(lo), float(hi)


def describe(estimate: float, interval: tuple[float, float]) -> str:
    """'+24.7% [+20.1, +29.0]', or the same followed by 'within noise' when the interval spans 0."""
    lo, hi = interval
    text = f"{100 * estimate:+.1f}% [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return text + (" within noise" if lo <= 0.0 <= hi else "")
