"""What swapping the norms buys in *your* model: whole training steps under each norm, interleaved.

    from rmsnorm.measure import measure_swap
    result = measure_swap(build, make_batch, norms=("layernorm", "rmsnorm"), rounds=20)
    print(result)

`build()` returns a fresh model as you wrote it; `make_batch()` returns the tuple of its forward's arguments;
`loss(output)` turns its output into a scalar (default: the mean square, a stand-in that backpropagates through
everything). Each variant is the model with every norm swapped (`rmsnorm.swap.swap_norms`) for one norm and
implementation, plus the same model with its norms made identity (`none`): one training step is forward,
backward and an optimiser step, and the variants run round-robin (`rmsnorm.interleaved`), so the speed-up
against LayerNorm comes with a 95% interval over the rounds' paired ratios.

The norms' share of the step is `(T_LayerNorm - T_none) / T_LayerNorm`, with its interval; it bounds what any
norm can buy (Amdahl): a norm that cost nothing would make the step faster by that share and no more. Where the
share is small, no norm's speed-up can be large, whatever the kernels. Each variant's share is also attributed
by the profiler (`rmsnorm.profile_share`: a scope around every norm module, its backward nodes matched by
sequence number), which does not rely on the identity model differing only in its norms.

Peak memory per variant: CUDA's allocator statistics over one step, or on the CPU the profiler's memory events
over one step (the largest sum of live allocations it saw, op by op), both above what was allocated before the
step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from rmsnorm.interleaved import describe, speedup, speedup_interval, synchronize, time_interleaved
from rmsnorm.profile_share import profiled_norm_share
from rmsnorm.registry import REFERENCE_NORM
from rmsnorm.stats import mean_interval
from rmsnorm.swap import swap_norms

IDENTITY = "none"


def _mean_square(output) -> torch.Tensor:
    if isinstance(output, (tuple, list)):
        output = output[0]
    if isinstance(output, dict):
        output = next(iter(output.values()))
    return output.float().pow(2).mean()


@dataclass
class Variant:
    name: str  # '<norm>' (fused) or '<norm>/<impl>'
    sec_per_step: float  # median over rounds
    speedup: float | None = None  # vs LayerNorm (fused), the paper's (T_LN - T) / T_LN
    interval: tuple[float, float] | None = None
    peak_bytes: int | None = None
    profiled_share: float | None = None  # the norms' share of its step, attributed by the profiler
    profiled_note: str = ""


@dataclass
class MeasureResult:
    device: str
    rounds: int
    variants: list[Variant]
    share: float | None = None  # LayerNorm's share of the step: (T_LN - T_none) / T_LN
    share_interval: tuple[float, float] | None = None
    swaps: list[str] = field(default_factory=list)  # what each variant's swap did

    @property
    def bound(self) -> float | None:
        """The largest speed-up vs LayerNorm any norm can give at that share (a norm that costs nothing)."""
        return self.share

    def __str__(self) -> str:
        lines = [f"whole training steps on {self.device}, variants interleaved over {self.rounds} rounds",
                 "| variant | ms / step | speed-up vs LayerNorm [95% CI] | norms' share, profiler-attributed "
                 "| peak memory (MB) |", "|---|---|---|---|---|"]
        for v in self.variants:
            sp = describe(v.speedup, v.interval) if v.interval is not None else (
                "reference" if v.name == REFERENCE_NORM else "-")
            mem = f"{v.peak_bytes / 2**20:.1f}" if v.peak_bytes is not None else "-"
            prof = f"{100 * v.profiled_share:.1f}%" if v.profiled_share is not None else "-"
            lines.append(f"| {v.name} | {1e3 * v.sec_per_step:.2f} | {sp} | {prof}{v.profiled_note} | {mem} |")
        if self.share is not None:
            lo, hi = self.share_interval
            lines.append(f"LayerNorm's share of the step: {100 * self.share:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] "
                         f"(from the same model with its norms made identity); no norm can make the step faster "
                         f"than that (Amdahl).")
        return "\n".join(lines)


def peak_bytes(step: Callable[[], object], device: torch.device) -> int | None:
    """The peak memory of one step: CUDA's allocator peak, or the profiler's largest sum of live CPU
    allocations over the step (its memory events, in the order they happened)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    # each op's own allocations net of its own frees, and the frees outside ops ('[memory]'), in time order:
    # the live total at op granularity (an op's transient inside itself is not seen)
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return int(peak) if events else None


def measure_swap(build: Callable[[], nn.Module], make_batch: Callable[[], Sequence], *,
                 norms: Sequence[str] = ("layernorm", "rmsnorm"), impls: Sequence[str] = ("fused",),
                 loss: Callable[[object], torch.Tensor] = _mean_square, rounds: int = 20, steps_per_round: int = 1,
                 warmup: int = 2, device: str | torch.device | None = None, lr: float = 1e-4,
                 memory: bool = True, seed: int = 0, self_check: bool = False,
                 profile: bool = True) -> MeasureResult:
    """Time whole training steps of `build()`'s model under each norm of `norms` x `impls` and with its norms
    made identity; see the module's docstring. LayerNorm (fused) is the reference and is always timed;
    `self_check` times a second copy of it too (`layernorm#again`), whose interval should contain 0."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available()
                                                                            else "cpu")
    if rounds < 2:
        raise ValueError(f"rounds={rounds}: an interval needs at least 2 rounds")
    names = [REFERENCE_NORM] + [n if impl == "fused" else f"{n}/{impl}" for n in norms for impl in impls
                                if not (n == REFERENCE_NORM and impl == "fused")]
    names.append(IDENTITY)
    if self_check:  # LayerNorm again, a second copy: its interval against the first should contain 0
        names.append(f"{REFERENCE_NORM}#again")
    steps, swaps, models = {}, [], {}
    for name in dict.fromkeys(names):
        norm, _, impl = name.split("#")[0].partition("/")
        torch.manual_seed(seed)
        model, report = swap_norms(build(), norm, impl=impl or None, inplace=True)
        model = model.to(device).train()
        swaps.append(f"{name}: {len(report.swapped)} norm modules swapped, "
                     f"{len(report.dropped_keys)} state keys dropped")
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        batch = tuple(a.to(device) if torch.is_tensor(a) else a for a in make_batch())

        def step(model=model, opt=opt, batch=batch):
            opt.zero_grad(set_to_none=True)
            loss(model(*batch)).backward()
            opt.step()

        steps[name] = step
        models[name] = model
    peaks = {name: peak_bytes(step, device) for name, step in steps.items()} if memory else {}
    times = time_interleaved(steps, device, rounds, steps_per_round, warmup, seed=seed)
    ref = times.per_round[REFERENCE_NORM]
    variants = []
    for name in steps:
        v = Variant(name, times.median(name), peak_bytes=peaks.get(name))
        if name != REFERENCE_NORM:
            v.speedup = speedup(ref, times.per_round[name])
            v.interval = speedup_interval(ref, times.per_round[name])
        if profile and name != IDENTITY:
            prof = profiled_norm_share(models[name], steps[name], steps=3)
            v.profiled_share = prof.share
            if prof.modules_seen != prof.modules_total:
                v.profiled_note = f" ({prof.modules_seen} of {prof.modules_total} norm modules seen)"
        variants.append(v)
    # the norms' share per round, paired: 1 - T_none / T_LN, its mean over rounds with a t interval
    shares = [1 - n / r for r, n in zip(ref, times.per_round[IDENTITY], strict=True)]
    share, lo, hi = mean_interval(shares)
    if not all(math.isfinite(x) for x in (share, lo, hi)):
        share = lo = hi = None
    return MeasureResult(str(device), rounds, variants, share, (lo, hi) if share is not None else None, swaps)
