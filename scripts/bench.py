"""Norm-layer benchmark: python scripts/bench.py [--device cpu|cuda] [--dtype float32] [--quick]

Forward, backward and forward+backward of every norm at the shapes the paper's tasks use. Per shape, every
measurement (each norm's three, and the roofline's copies) runs round-robin over several rounds after warm-up,
on all of torch's threads, CUDA synchronised; the table gives medians over rounds, ratios to torch's fused
LayerNorm with a 95% t interval over rounds, achieved GB/s and their share of the roofline measured in the same
rounds: a copy of the shape's tensor into a preallocated buffer (the memory limit) and into a fresh one (what
an allocating op pays). On CUDA, also the share of the card's data-sheet peak bandwidth. On CPU, a second,
short run in a plain process (no malloc settings) shows what a user who imports `rmsnorm` in a script gets.
On CUDA the table adds each call's kernel time (the device time of the kernels it launches, from the
profiler) beside its eager time per call (back-to-back calls: at a recurrent step's size the host's launch and
autograd work set it), ratios to torch's `F.rms_norm`, our Triton kernels forced beside the dispatch's choice,
`torch.compile` of the reference at the large shapes, and a check of the suite's GPU targets.
Writes results/bench/<device>.md, the measurements as .json (render from them), and a plot, with the command,
the commit, versions and the machine above the table.
"""

from __future__ import annotations

from experiments.core.training import malloc

if __name__ == "__main__":
    # before torch and Hydra load: the re-execution with steady malloc settings then costs no second import
    malloc.reexec_with_stable_malloc()

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import rmsnorm
from experiments.core.machine import machine_name
from experiments.core.provenance import describe as describe_stamp
from experiments.core.provenance import stamp
from rmsnorm import composite
from rmsnorm.interleaved import RATIO_RULE, speedup, speedup_interval, synchronize, time_interleaved
from rmsnorm.kernels import dispatch
from rmsnorm.reference import rms_norm_reference
from rmsnorm.registry import REFERENCE_NORM

EPS = 1e-8
P = 0.0625

# (task, what the shape is, rows, features)
CASES = [
    ("translation", "tokens x hidden 1024 (batch 80 x 50 tokens)", 4000, 1024),
    ("translation", "tokens x 2*hidden (GRU gates [r;u])", 4000, 2048),
    ("retrieval", "batch x GRU hidden", 128, 1024),
    ("reading", "batch x LSTM hidden, one step", 64, 240),
    ("reading", "batch x 4 LSTM gates, one step", 64, 960),
    ("translation", "batch x GRU gates [r;u], one step", 80, 2048),
    ("cifar10", "(100 x 96 channels) x 32x32 map", 9600, 1024),
    ("cifar10", "(100 x 192 channels) x 16x16 map", 19200, 256),
    ("cifar10", "(100 x 192 channels) x 8x8 map", 19200, 64),
]
# on a GPU also the two shapes the bandwidth targets are set at
CUDA_CASES = CASES + [("bandwidth", "large rows", 4096, 4096), ("bandwidth", "many rows", 16384, 1024)]
QUICK_CASES = [("quick", "small", 64, 512), ("quick", "odd width", 33, 77)]
# one step of a recurrent cell: the calls whose eager latency, not bandwidth, sets the cost
RECURRENT_SHAPES = {(64, 240), (64, 960), (80, 2048), (128, 1024)}
COMPILE_MIN_ELEMENTS = 1 << 20  # torch.compile of the reference only where a compile per shape pays off

# peak memory bandwidth in GB/s by device-name fragment (vendor data sheets)
PEAK_GBPS = {"H200": 4800, "H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100": 3350,
             "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100": 1555, "L40S": 864, "L4": 300,
             "RTX 4090": 1008, "RTX 3090": 936, "V100": 900, "TITAN X": 480, "2080 Ti": 616}


def implementations(d: int, device: torch.device | None = None, rows: int = 0):
    """The rows of one shape's table. 'ours' is what the library's dispatch picks for the call; on CUDA our
    Triton kernels forced, and torch.compile of the reference at the large shapes, come beside it."""
    k = max(1, int(d * P))
    impls = {
        "none (x*g)": lambda x, w, b: x * w,
        "layernorm (torch)": lambda x, w, b: F.layer_norm(x, (d,), w, b, EPS),
        "rms_norm (torch)": lambda x, w, b: F.rms_norm(x, (d,), w, EPS),
        "rmsnorm (ours)": lambda x, w, b: rmsnorm.rms_norm(x, w, None, EPS),
        f"prmsnorm (ours, p={P:g})": lambda x, w, b: rmsnorm.rms_norm(x, w, None, EPS, k=k),
        "l2norm (ours)": lambda x, w, b: rmsnorm.l2_norm(x, w, None, EPS),
        # the chains of tensor ops the paper's frameworks ran (norm.impl=composite), LayerNorm's included
        "layernorm (composite)": lambda x, w, b: composite.layer_norm(x, w, b, EPS),
        "rmsnorm (composite)": lambda x, w, b: composite.rms_norm(x, w, None, EPS),
        f"prmsnorm (composite, p={P:g})": lambda x, w, b: composite.rms_norm(x, w, None, EPS, k),
        "l2norm (composite)": lambda x, w, b: composite.l2_norm(x, w, None, EPS),
    }
    impls.update(_registered(d))
    if device is not None and device.type == "cuda":
        from rmsnorm.kernels import triton_kernels

        if triton_kernels.available():
            impls["rmsnorm (ours, Triton forced)"] = lambda x, w, b: triton_kernels.row_norm(x, w, None, EPS, d, 1 / d)
            impls["l2norm (ours, Triton forced)"] = lambda x, w, b: triton_kernels.row_norm(x, w, None, EPS, d, 1.0)
        if rows * d >= COMPILE_MIN_ELEMENTS:
            compiled = torch.compile(lambda x, w: rms_norm_reference(x, w, None, EPS), dynamic=False)
            impls["rmsnorm (reference, torch.compile)"] = lambda x, w, b: compiled(x, w)
    return impls


# the registry's norms that the rows above write out by name
BENCHED = {"none", "layernorm", "rmsnorm", "prmsnorm", "l2norm"}


def _registered(d: int) -> dict:
    """A row for every other registered norm of a single layer's rows (`recurrent=True`: batch norm and weight
    norm are not row norms), as its module: a norm added in rmsnorm/ is benched with no edit here."""
    impls = {}
    for name in rmsnorm.norm_names():
        info = rmsnorm.norm_info(name)
        if name in BENCHED or not info.recurrent:
            continue
        built = {"module": info.features(d, eps=EPS, p=P, affine=True, bias=info.shift)}

        def call(x, w, b, built=built):
            if "on" not in built:  # to the input's device and dtype once, outside the timed calls' steady state
                built["module"], built["on"] = built["module"].to(x.device, x.dtype), True
            return built["module"](x)

        impls[f"{name} (registered)"] = call
    return impls


MODES = ("fwd", "bwd", "fwd_bwd")


@dataclass
class Result:
    task: str
    shape: str
    rows: int
    d: int
    impl: str
    times: dict[str, list[float]]  # mode -> seconds per call, one entry per round
    kernel: float | None = None  # CUDA: device seconds of the kernels one fwd+bwd call launches (profiler)

    def median(self, mode: str) -> float:
        return float(torch.tensor(self.times[mode]).median())

    @property
    def fwd(self) -> float:
        return self.median("fwd")

    @property
    def bwd(self) -> float:
        return self.median("bwd")

    @property
    def fwd_bwd(self) -> float:
        return self.median("fwd_bwd")

    def gbps(self, mode: str, size: int) -> float:
        """The minimal traffic's rate: the forward reads x and writes y, the backward reads x and dy, writes dx."""
        tensors = {"fwd": 2, "bwd": 3}[mode]
        return tensors * self.rows * self.d * size / self.median(mode) / 1e9


@dataclass
class Roofline:
    copy: list[float]  # seconds to copy the shape's tensor into a preallocated buffer, per round
    fresh: list[float]  # ... into a newly allocated one

    def gbps(self, nbytes: int, fresh: bool = False) -> float:
        return 2 * nbytes / float(torch.tensor(self.fresh if fresh else self.copy).median()) / 1e9


def _steps(fn, x, w, b, dy) -> dict[str, object]:
    """The three measurements of one norm as zero-argument callables."""
    params = [x, w]
    y = fn(x, w, b)

    def forward():
        with torch.no_grad():
            fn(x, w, b)

    return {"fwd": forward,
            "bwd": lambda: torch.autograd.grad(y, params, dy, retain_graph=True),
            "fwd_bwd": lambda: torch.autograd.grad(fn(x, w, b), params, dy)}


def _calls_per_round(step, device: torch.device, seconds: float) -> int:
    """How many calls of `step` fill about `seconds` (at least one)."""
    step()
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return max(1, int(seconds / max(time.perf_counter() - start, 1e-7)))


def kernel_seconds(step, calls: int = 20) -> float | None:
    """Device time of the CUDA kernels one call of `step` launches, from the profiler (no host time in it);
    None where the profiler gives nothing."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                step()
            torch.cuda.synchronize()
        total_us = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == DeviceType.CUDA)
    except Exception as err:  # a profiler without CUPTI: say so in the table rather than fail the bench
        print(f"  kernel time not measured: {err}", flush=True)
        return None
    return total_us / 1e6 / calls if total_us > 0 else None


def time_shape(impls: dict, rows: int, d: int, device: torch.device, dtype: torch.dtype, rounds: int,
               seconds_per_round: float) -> tuple[dict[str, dict[str, list[float]]], Roofline, dict]:
    """Every implementation's three measurements and the two copies, interleaved over `rounds` rounds."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(rows, d, device=device, dtype=dtype, generator=g).requires_grad_()
    w = torch.ones(d, device=device, dtype=dtype, requires_grad=True)
    b = torch.zeros(d, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn(rows, d, device=device, dtype=dtype, generator=g)
    buffer = torch.empty_like(dy)
    steps = {"copy": lambda: buffer.copy_(dy), "fresh": lambda: dy.clone()}
    for name, fn in impls.items():
        steps.update({f"{name}|{mode}": step for mode, step in _steps(fn, x, w, b, dy).items()})
    # each variant runs several calls per round so a round's clock reads are well above the timer's resolution
    calls = {name: _calls_per_round(step, device, seconds_per_round) for name, step in steps.items()}
    batched = {name: (lambda step=step, n=n: [step() for _ in range(n)]) for (name, step), n
               in zip(steps.items(), calls.values(), strict=True)}
    times = time_interleaved(batched, device, rounds=rounds, steps_per_round=1, warmup_steps=1)
    per_call = {name: [t / calls[name] for t in ts] for name, ts in times.per_round.items()}
    by_impl = {name: {mode: per_call[f"{name}|{mode}"] for mode in MODES} for name in impls}
    kernels = {}
    if device.type == "cuda":
        kernels = {name: kernel_seconds(steps[f"{name}|fwd_bwd"]) for name in impls}
        kernels["copy"] = kernel_seconds(steps["copy"])
    return by_impl, Roofline(per_call["copy"], per_call["fresh"]), kernels


def run(cases, device: torch.device, dtype: torch.dtype, rounds: int, seconds_per_round: float,
        only: tuple[str, ...] | None = None) -> tuple[list[Result], dict[tuple, Roofline]]:
    results, rooflines = [], {}
    for task, shape, rows, d in cases:
        impls = {name: fn for name, fn in implementations(d, device, rows).items()
                 if only is None or any(name.startswith(o) for o in only)}
        by_impl, roofline, kernels = time_shape(impls, rows, d, device, dtype, rounds, seconds_per_round)
        rooflines[(task, shape, rows, d)] = roofline
        results += [Result(task, shape, rows, d, name, times, kernels.get(name)) for name, times in by_impl.items()]
        print(f"  {task:12s} {rows:6d} x {d:5d} done", flush=True)
    return results, rooflines


# (layer kind, hidden, batch, steps, layers): the three task shapes first (the translation decoder's
# GRU, the retrieval task's sentence encoder over 12-word captions, the reading task's LSTM), then a small GRU.
# "torch" is torch.nn.GRU/LSTM; a norm name is our layer on the native op; "<norm> (Python loop)" the same layer
# on the Python loop over its cell (the reference the op is tested against, and what ran before it).
_RNN_LAYERS = ["torch", "none", "layernorm", "rmsnorm", "prmsnorm", "rmsnorm (Python loop)"]
RNN_SETTINGS = [
    ("GRU", 1024, 80, 50, _RNN_LAYERS),
    ("GRU", 1024, 128, 12, _RNN_LAYERS),
    ("LSTM", 240, 64, 50, _RNN_LAYERS),
    ("GRU", 256, 80, 50, _RNN_LAYERS),
]
QUICK_RNN = [("GRU", 32, 8, 5, ["torch", "none", "layernorm", "rmsnorm", "rmsnorm (Python loop)"]),
             ("LSTM", 32, 8, 5, ["torch", "none", "layernorm", "rmsnorm"])]
# recurrent layers time whole sequences (0.05-1.5 s a call): at least this many rounds, so that the intervals
# of ratios and of added times hold
RNN_MIN_ROUNDS = 25
# and as many more as fit in this many seconds a setting (at most RNN_MAX_ROUNDS): at the cheap settings what a
# norm adds is a few ms of a 0.1 s call, and 25 rounds left its fraction of LayerNorm's anywhere in [0.45, 1.47]
RNN_SECONDS_PER_SETTING = 75.0
RNN_MAX_ROUNDS = 120
PYTHON_LOOP = " (Python loop)"


def _layer(kind: str, hidden: int, name: str) -> torch.nn.Module:
    if name == "torch":
        return (torch.nn.GRU if kind == "GRU" else torch.nn.LSTM)(hidden, hidden)
    norm = name.removesuffix(PYTHON_LOOP)
    spec, native = rmsnorm.NormSpec(norm, p=P), not name.endswith(PYTHON_LOOP)
    cls = rmsnorm.NormGRU if kind == "GRU" else rmsnorm.NormLSTM
    return cls(hidden, hidden, spec, native=native)


def _rnn_rounds(calls: dict, rounds: int, device: torch.device) -> int:
    """Rounds for one recurrent setting: at least `rounds` and RNN_MIN_ROUNDS, more where a round is cheap
    (RNN_SECONDS_PER_SETTING), from one timed round after a warm one (synchronised: on a GPU the calls only
    queue kernels)."""
    fit = _calls_per_round(lambda: [call() for call in calls.values()], device, RNN_SECONDS_PER_SETTING)
    return max(rounds, RNN_MIN_ROUNDS, min(RNN_MAX_ROUNDS, fit))


def run_rnn(device: torch.device, dtype: torch.dtype, rounds: int, quick: bool) -> list[dict]:
    """Forward+backward of a recurrent layer over its steps, the layers of one setting interleaved; every
    round's seconds kept (the intervals are computed from them)."""
    rows = []
    for kind, hidden, batch, steps, names in QUICK_RNN if quick else RNN_SETTINGS:
        x = torch.randn(steps, batch, hidden, device=device, dtype=dtype, requires_grad=True)
        layers = {}
        for name in names:
            torch.manual_seed(0)
            layers[name] = _layer(kind, hidden, name).to(device, dtype)
        calls = {name: (lambda layer=layer, x=x: layer(x)[0].sum().backward()) for name, layer in layers.items()}
        times = time_interleaved(calls, device, rounds=rounds if quick else _rnn_rounds(calls, rounds, device),
                                 steps_per_round=1, warmup_steps=2)
        for name in names:
            native = getattr(layers[name], "uses_native", lambda x: None)(x)
            rows.append({"kind": kind, "hidden": hidden, "batch": batch, "steps": steps, "norm": name,
                         "seconds": times.median(name), "rounds": times.per_round[name], "native": native})
        print(f"  {kind} hidden {hidden} batch {batch} done", flush=True)
    return rows


def added_fraction(none: list[float], ln: list[float], other: list[float], resamples: int = 4000):
    """What a norm adds to the layer's time over norm=none, as a fraction of what LayerNorm adds: the ratio of
    the median per-round added times (paired within a round; medians, so one slow round of norm=none does not
    move every norm), and a 95% percentile bootstrap interval over rounds (a round resampled with all its
    layers). None where LayerNorm adds nothing measurable."""
    import random
    import statistics

    n = len(none)
    if n < 2 or not (len(ln) == len(other) == n):
        return None

    def ratio(idx):
        added_ln = statistics.median(ln[i] - none[i] for i in idx)
        return None if added_ln <= 0 else statistics.median(other[i] - none[i] for i in idx) / added_ln

    est = ratio(range(n))
    if est is None:
        return None
    rng = random.Random(0)
    draws = sorted(r for r in (ratio([rng.randrange(n) for _ in range(n)]) for _ in range(resamples)) if r is not None)
    lo, hi = draws[int(0.025 * len(draws))], draws[min(len(draws) - 1, int(0.975 * len(draws)))]
    return est, min(lo, est), max(hi, est)


def _interval_text(value) -> str:
    return "" if value is None else f"{value[0]:.2f} [{value[1]:.2f}, {value[2]:.2f}]"


def render_rnn(rows: list[dict]) -> str:
    """Per setting: each layer's time, its ratio to torch's layer (geometric mean of the rounds' paired ratios,
    95% t interval) and, for each norm, its added time over norm=none as a fraction of LayerNorm's (bootstrap)."""
    out = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        ref = f"torch.nn.{kind}"
        out += [f"## {kind} layer: forward+backward", "",
                f"Ours on the native op (`rmsnorm/kernels/csrc/recurrent_cpu.cpp`) unless marked Python loop. "
                f"`/ {ref}`: the time over torch's layer, {RATIO_RULE}. `added`: the time over our {kind} with "
                "norm=none; `added / LN's`: that over LayerNorm's added time (ratio of median per-round added "
                "times, 95% percentile bootstrap over rounds). Medians over rounds in ms; `rounds`: interleaved "
                "rounds of the setting (more where a round is cheap).", "",
                f"| hidden | batch | steps | layer | ms | / {ref} [95%] | added ms | added / LN's added [95%] "
                "| rounds |",
                "|---|---|---|---|---|---|---|---|---|"]
        for hidden, batch, steps in dict.fromkeys((r["hidden"], r["batch"], r["steps"]) for r in rows
                                                  if r["kind"] == kind):
            group = {r["norm"]: r for r in rows
                     if (r["kind"], r["hidden"], r["batch"], r["steps"]) == (kind, hidden, batch, steps)}
            base, ln, torch_ = group.get("none"), group.get(REFERENCE_NORM), group.get("torch")
            for name, r in group.items():
                is_norm = name not in ("none", "torch") and not name.endswith(PYTHON_LOOP)
                added = r["seconds"] - base["seconds"] if base is not None and is_norm else None
                fraction = None
                if is_norm and base is not None and ln is not None and "rounds" in r:
                    fraction = added_fraction(base["rounds"], ln["rounds"], r["rounds"])
                if torch_ is None or name == "torch":
                    vs_torch = "1" if name == "torch" else ""
                elif "rounds" in r:
                    est = 1 - speedup(torch_["rounds"], r["rounds"])
                    lo, hi = speedup_interval(torch_["rounds"], r["rounds"])
                    vs_torch = f"{est:.2f} [{1 - hi:.2f}, {1 - lo:.2f}]"
                else:
                    vs_torch = f"{r['seconds'] / torch_['seconds']:.2f}"
                label = ref if name == "torch" else f"ours, {name}"
                fraction_text = "1" if name == REFERENCE_NORM else _interval_text(fraction)
                rounds = len(r["rounds"]) if "rounds" in r else ""
                out.append(f"| {hidden} | {batch} | {steps} | {label} | {r['seconds'] * 1e3:.1f} | {vs_torch} | "
                           f"{'' if added is None else f'{added * 1e3:.1f}'} | {fraction_text} | {rounds} |")
        out.append("")
    return "\n".join(out)


def peak_bandwidth(device_name: str) -> tuple[float | None, str]:
    """The data-sheet bandwidth of a CUDA card by its name; (None, "") for a CPU."""
    if not device_name:
        return None, ""
    for fragment, gbps in PEAK_GBPS.items():
        if fragment in device_name:
            return float(gbps), f"{gbps} GB/s (data sheet, '{fragment}')"
    return None, "unknown for this card"


def ratio_interval(result: Result, ref: Result, mode: str) -> tuple[float, float, float]:
    """Time over the reference's (geometric mean of the rounds' ratios) and its 95% t interval."""
    est = 1 - speedup(ref.times[mode], result.times[mode])
    lo, hi = speedup_interval(ref.times[mode], result.times[mode])
    return est, 1 - hi, 1 - lo


def _ratio(result: Result, ln: Result, mode: str) -> str:
    """Time over LayerNorm's, with its 95% t interval over the rounds' paired ratios."""
    if result is ln:
        return "1"
    est, lo, hi = ratio_interval(result, ln, mode)
    return f"{est:.2f} [{lo:.2f}, {hi:.2f}]"


OURS = ("rmsnorm (ours)", "prmsnorm (ours,", "l2norm (ours)")


def render(results: list[Result], rooflines: dict[tuple, Roofline], run: dict) -> str:
    """The markdown of one run from its measurements and `run`'s facts (the JSON's: device, dtype, command,
    machine, rounds, threads, kernel note, provenance, CUDA device name and dispatch choices)."""
    peak, peak_note = peak_bandwidth(run.get("cuda_device", ""))
    size = torch.finfo(getattr(torch, run["dtype"])).bits // 8
    cuda = run["device"] == "cuda"
    produced = run["produced_by"]
    lines = [
        f"# Norm benchmark: {run['machine']}",
        "",
        f"Command: `{run['command']}`  ",
        f"Produced by: {describe_stamp(produced)}  ",
        f"Date: {produced['date']}, torch {produced['torch']}, dtype {run['dtype']}, "
        f"eps {EPS:g}, {run['threads']} threads{run['kernel_note']}  ",
        f"Per shape, every measurement below and the two copies run round-robin over {run['rounds']} rounds after "
        "warm-up; times are medians over rounds in microseconds, `/LN` is the time over torch's fused LayerNorm "
        "(for the `composite` rows, the norms as chains of tensor ops, over the composite LayerNorm): the "
        "geometric mean of the rounds' paired ratios, with a 95% t interval. GB/s counts the minimal traffic "
        "(forward reads x and writes y, backward reads x and dy and writes dx). `% copy` is that rate over the "
        "roofline measured in the same rounds: a copy of the shape's tensor into a preallocated buffer (reads "
        "one, writes one); above 100% where part of the traffic is served from cache. The copy into a fresh "
        "tensor shows what an op that allocates its output pays." + (f" Peak bandwidth: {peak_note}." if peak else ""),
    ]
    if cuda:
        lines.append("Times are eager: back-to-back calls from Python, so at a recurrent step's size they are the "
                     "host's latency per call (launches, autograd), at large shapes the device's. `kernel us` is "
                     "the device time of the kernels one forward+backward launches (profiler), `/rms_norm` the "
                     "time over torch's `F.rms_norm`. `(ours)` is the library's dispatch (its measured choice, "
                     "listed at the end); `Triton forced` our kernels whatever the dispatch would choose.")
    if run["device"] == "cpu":
        lines.append(f"On Linux the script runs with {run['malloc']} so that glibc keeps freed blocks instead "
                     "of page-faulting them in anew on some calls (experiments/core/training/malloc.py); the last "
                     "section is a plain process without them.")
    lines = [line for line in lines if line] + [""]
    for key in dict.fromkeys((r.task, r.shape, r.rows, r.d) for r in results):
        task, shape, rows, d = key
        group = [r for r in results if (r.task, r.shape, r.rows, r.d) == key]
        ln = next(r for r in group if r.impl.startswith(REFERENCE_NORM))
        # composite rows against the composite LayerNorm: the paper's frameworks ran both as chains of ops
        ln_c = next((r for r in group if r.impl == f"{REFERENCE_NORM} (composite)"), ln)
        torch_rms = next((r for r in group if r.impl.startswith("rms_norm (torch)")), None)
        roof = rooflines[key]
        nbytes = rows * d * size
        copy_gbps = roof.gbps(nbytes)
        head = ("| norm | fwd us | bwd us | fwd+bwd us | fwd /LN | fwd+bwd /LN | fwd GB/s | fwd % copy | "
                "bwd GB/s | bwd % copy |")
        if cuda:
            head += " fwd+bwd kernel us | fwd+bwd /rms_norm |"
        if peak:
            head += " fwd % peak | bwd % peak |"
        lines += [f"## {task}: {rows} x {d}, {shape}", "",
                  f"Roofline: copy into a preallocated tensor {copy_gbps:.1f} GB/s, into a fresh one "
                  f"{roof.gbps(nbytes, fresh=True):.1f} GB/s.", "",
                  head, "|---" * (head.count("|") - 1) + "|"]
        for r in group:
            fwd_gbps, bwd_gbps = r.gbps("fwd", size), r.gbps("bwd", size)
            ref = ln_c if "(composite" in r.impl else ln
            cells = [r.impl, f"{r.fwd * 1e6:.1f}", f"{r.bwd * 1e6:.1f}", f"{r.fwd_bwd * 1e6:.1f}",
                     _ratio(r, ref, "fwd"), _ratio(r, ref, "fwd_bwd"), f"{fwd_gbps:.1f}",
                     f"{100 * fwd_gbps / copy_gbps:.0f}%", f"{bwd_gbps:.1f}", f"{100 * bwd_gbps / copy_gbps:.0f}%"]
            if cuda:
                cells += ["" if r.kernel is None else f"{r.kernel * 1e6:.1f}",
                          "" if torch_rms is None else _ratio(r, torch_rms, "fwd_bwd")]
            if peak:
                cells += [f"{100 * fwd_gbps / peak:.0f}%", f"{100 * bwd_gbps / peak:.0f}%"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if cuda:
        lines += render_targets(gpu_targets(results, rooflines, size), run.get("dispatch", {}))
    elif targets := cpu_targets(results, rooflines, size):
        lines += render_targets(targets, None, "The CPU targets (pRMSNorm)")
    return "\n".join(lines)


# the suite's GPU targets (bf16 is where they are set): bandwidth at the two large shapes, never slower than
# torch's LayerNorm or F.rms_norm, and a recurrent step's latency
TARGET_SHAPES = {(4096, 4096), (16384, 1024)}


def gpu_targets(results: list[Result], rooflines: dict[tuple, Roofline], size: int) -> list[dict]:
    """Each target at each shape and norm it applies to: what was measured, the bound, met or not."""
    out = []
    for key in dict.fromkeys((r.task, r.shape, r.rows, r.d) for r in results):
        _, _, rows, d = key
        group = [r for r in results if (r.task, r.shape, r.rows, r.d) == key]
        ln = next(r for r in group if r.impl.startswith(REFERENCE_NORM))
        torch_rms = next((r for r in group if r.impl.startswith("rms_norm (torch)")), None)
        copy_gbps = rooflines[key].gbps(rows * d * size)
        for r in (r for r in group if r.impl.startswith(OURS)):
            where = f"{rows} x {d}, {r.impl}"
            if (rows, d) in TARGET_SHAPES:
                fwd, bwd = (100 * r.gbps(mode, size) / copy_gbps for mode in ("fwd", "bwd"))
                out.append({"target": "forward >= 80% of copy", "where": where, "value": f"{fwd:.0f}%",
                            "met": fwd >= 80})
                out.append({"target": "backward >= 65% of copy", "where": where, "value": f"{bwd:.0f}%",
                            "met": bwd >= 65})
            est, _, hi = ratio_interval(r, ln, "fwd_bwd")
            out.append({"target": "fwd+bwd <= 1.0x LayerNorm (upper end)", "where": where,
                        "value": f"{est:.2f} (upper {hi:.2f})", "met": hi <= 1.0})
            if torch_rms is not None:
                est, _, hi = ratio_interval(r, torch_rms, "fwd_bwd")
                out.append({"target": "fwd+bwd <= 1.05x F.rms_norm (upper end)", "where": where,
                            "value": f"{est:.2f} (upper {hi:.2f})", "met": hi <= 1.05})
            if (rows, d) in RECURRENT_SHAPES:
                est, _, hi = ratio_interval(r, ln, "fwd_bwd")
                out.append({"target": "eager latency <= 1.1x LayerNorm (recurrent step)", "where": where,
                            "value": f"{est:.2f} (upper {hi:.2f})", "met": hi <= 1.1})
    return out


# pRMSNorm on the CPU: it does strictly less arithmetic than RMSNorm, so at every shape of at least this many
# elements its backward should stream near the copy's rate and its fwd+bwd cost no more than RMSNorm's
PRMS_TARGET_ELEMENTS = 1 << 20


def cpu_targets(results: list[Result], rooflines: dict[tuple, Roofline], size: int) -> list[dict]:
    """pRMSNorm's targets at each shape of >= PRMS_TARGET_ELEMENTS elements where ours ran both norms."""
    out = []
    for key in dict.fromkeys((r.task, r.shape, r.rows, r.d) for r in results):
        _, _, rows, d = key
        group = {r.impl: r for r in results if (r.task, r.shape, r.rows, r.d) == key}
        prms = next((r for name, r in group.items() if name.startswith("prmsnorm (ours")), None)
        rms = group.get("rmsnorm (ours)")
        if rows * d < PRMS_TARGET_ELEMENTS or prms is None or rms is None:
            continue
        where = f"{rows} x {d}, {prms.impl}"
        bwd_gbps = prms.gbps("bwd", size)
        copy, fresh = rooflines[key].gbps(rows * d * size), rooflines[key].gbps(rows * d * size, fresh=True)
        out.append({"target": "backward >= 60% of copy", "where": where,
                    "value": f"{100 * bwd_gbps / copy:.0f}% ({100 * bwd_gbps / fresh:.0f}% of the fresh copy)",
                    "met": bwd_gbps >= 0.6 * copy})
        est, _, hi = ratio_interval(prms, rms, "fwd_bwd")
        out.append({"target": "fwd+bwd <= 1.05x RMSNorm (ours) (upper end)", "where": where,
                    "value": f"{est:.2f} (upper {hi:.2f})", "met": hi <= 1.05})
    return out


def render_targets(targets: list[dict], chosen: dict[str, str] | None, title: str = "The GPU targets") -> list[str]:
    """The targets as a table; `chosen`: the CUDA dispatch's choices in the run (None: no dispatch to list)."""
    met = sum(t["met"] for t in targets)
    lines = [f"## {title}", "", f"{met} of {len(targets)} met.", "",
             "| target | shape, norm | measured | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['where']} | {t['value']} | {'yes' if t['met'] else '**no**'} |" for t in targets]
    if chosen is not None:
        lines += ["", "The dispatch's choices in this run (norm/dtype/width/rows -> path):", ""]
        lines += [f"- `{k}`: {v}" for k, v in sorted(chosen.items())] or ["- none"]
    return lines + [""]


def to_json(results: list[Result], rooflines: dict[tuple, Roofline]) -> dict:
    """Every measurement, per round, so the tables can be rendered again without measuring."""
    return {"results": [{"task": r.task, "shape": r.shape, "rows": r.rows, "d": r.d, "impl": r.impl,
                         "times": r.times, "kernel": r.kernel} for r in results],
            "rooflines": [{"key": list(k), "copy": v.copy, "fresh": v.fresh} for k, v in rooflines.items()]}


def from_json(data: dict) -> tuple[list[Result], dict[tuple, Roofline]]:
    results = [Result(r["task"], r["shape"], r["rows"], r["d"], r["impl"], r["times"], r.get("kernel"))
               for r in data["results"]]
    return results, {tuple(r["key"]): Roofline(r["copy"], r["fresh"]) for r in data["rooflines"]}


def render_all(data: dict) -> str:
    """The whole markdown file from a run's JSON: shapes, recurrent layers, the plain process."""
    text = render(*from_json(data), data)
    if data.get("stale"):  # a note added to an older run's JSON when the code it measured has changed
        text = f"> **STALE: {data['stale']}**\n\n" + text
    text += "\n" + render_rnn(data["rnn"])
    if data.get("plain") is not None:
        text += "\n" + render_plain(data["plain"], data["dtype"])
    return text


# what a user's own script gets: the largest shapes, ours against LayerNorm, no malloc settings
USER_IMPLS = (REFERENCE_NORM, "rmsnorm (ours)")


def measure_plain(cases, dtype: str, rounds: int, seconds_per_round: float) -> list | str:
    """Runs this script again in a process without the malloc settings: its measurements, or its error."""
    env = {k: v for k, v in os.environ.items() if k not in malloc.MALLOC_ENV}
    env["RMSNORM_KEEP_MALLOC"] = "1"
    largest = sorted(cases, key=lambda c: c[2] * c[3])[-2:]
    args = [sys.executable, __file__, "--plain-process-json", json.dumps(largest), "--device", "cpu",
            "--dtype", dtype, "--rounds", str(rounds), "--seconds-per-round", str(seconds_per_round)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def render_plain(measured: list | str, dtype: str) -> str:
    if isinstance(measured, str):
        return f"## A plain process\n\nThe plain-process run failed:\n\n```\n{measured}\n```\n"
    lines = ["## A plain process: a user's script that imports `rmsnorm`, no malloc settings", "",
             "| shape | norm | fwd us | fwd+bwd us | fwd /LN | fwd+bwd /LN | copy GB/s | fresh copy GB/s |",
             "|---|---|---|---|---|---|---|---|"]
    for case in measured:
        results = [Result(*case["key"], impl, times) for impl, times in case["impls"].items()]
        ln = next(r for r in results if r.impl.startswith(REFERENCE_NORM))
        roof = Roofline(case["copy"], case["fresh"])
        nbytes = case["key"][2] * case["key"][3] * torch.finfo(getattr(torch, dtype)).bits // 8
        for r in results:
            lines.append(f"| {r.rows} x {r.d} | {r.impl} | {r.fwd * 1e6:.1f} | {r.fwd_bwd * 1e6:.1f} | "
                         f"{_ratio(r, ln, 'fwd')} | {_ratio(r, ln, 'fwd_bwd')} | {roof.gbps(nbytes):.1f} | "
                         f"{roof.gbps(nbytes, fresh=True):.1f} |")
    lines += ["", "Where `fresh copy` falls far below `copy`, every op that allocates an output of that size "
              "(LayerNorm's as much as ours) pays page faults: glibc hands blocks above its mmap threshold "
              f"back to the OS. Running with {malloc.describe()} (or a caching allocator such as jemalloc) "
              "avoids it; the library does not change a process's allocator behind a user's back.", ""]
    return "\n".join(lines)


def _plain_process_json(cases_json: str, device, dtype, rounds: int, seconds_per_round: float) -> None:
    out = []
    for task, shape, rows, d in json.loads(cases_json):
        impls = {name: fn for name, fn in implementations(d).items() if name.startswith(USER_IMPLS)}
        by_impl, roof, _ = time_shape(impls, rows, d, device, dtype, rounds, seconds_per_round)
        out.append({"key": [task, shape, rows, d], "impls": by_impl, "copy": roof.copy, "fresh": roof.fresh})
    print(json.dumps(out))


def plot(results: list[Result], out_png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys((r.task, r.rows, r.d) for r in results))
    impls = [i for i in dict.fromkeys(r.impl for r in results) if not i.startswith(REFERENCE_NORM)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    width = 0.8 / len(impls)
    for ax, mode in zip(axes, ("fwd", "fwd_bwd"), strict=True):
        for j, impl in enumerate(impls):
            ratios = []
            for key in keys:
                group = {r.impl: r for r in results if (r.task, r.rows, r.d) == key}
                ln = next(r for name, r in group.items() if name.startswith(REFERENCE_NORM))
                ratios.append(getattr(group[impl], mode) / getattr(ln, mode))
            ax.bar([i + j * width for i in range(len(keys))], ratios, width, label=impl)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))])
        ax.set_xticklabels([f"{t}\n{r}x{d}" for t, r, d in keys], fontsize=7)
        ax.set_title({"fwd": "forward", "fwd_bwd": "forward + backward"}[mode] + ": time / LayerNorm's")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    parser.add_argument("--quick", action="store_true", help="two small shapes, short timings (a smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per shape (default 9; quick 2)")
    parser.add_argument("--seconds-per-round", type=float, default=0.02,
                        help="about how long each measurement runs in each round")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "bench")
    parser.add_argument("--plain-process-json", help=argparse.SUPPRESS)
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="write the markdown of an earlier run from its .json, measuring nothing")
    args = parser.parse_args(argv)
    if args.render:
        args.render.with_suffix(".md").write_text(render_all(json.loads(args.render.read_text())))
        print(f"wrote {args.render.with_suffix('.md')}")
        return 0

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    rounds = args.rounds or (2 if args.quick else 9)
    kernel_note = ""
    if device.type == "cpu":
        from rmsnorm.kernels import cpu

        cpu.load()  # build (and measure the parallel grain) outside the timings
        grain = cpu.parallel_grain()
        kernel_note = "" if grain is None else f", our kernel parallel from {grain} elements per thread (measured)"
    if args.plain_process_json:
        _plain_process_json(args.plain_process_json, device, dtype, rounds, args.seconds_per_round)
        return 0
    machine = machine_name(device)
    path = "fused kernels" if dispatch.enabled() else "reference (RMSNORM_KERNELS=reference)"
    print(f"benchmarking on {machine}, {args.dtype}, our norms via {path}")
    cases = QUICK_CASES if args.quick else CUDA_CASES if device.type == "cuda" else CASES
    results, rooflines = run(cases, device, dtype, rounds, args.seconds_per_round)
    given = argv if argv is not None else sys.argv[1:]
    command = "python scripts/bench.py " + " ".join(shlex.quote(a) for a in given)
    data = {"command": command.strip(), "produced_by": stamp(machine), "machine": machine, "device": device.type,
            "dtype": args.dtype, "rounds": rounds, "threads": torch.get_num_threads(), "kernel_note": kernel_note,
            "malloc": malloc.describe(),
            "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
            **to_json(results, rooflines), "rnn": run_rnn(device, dtype, rounds, args.quick),
            "plain": measure_plain(cases, args.dtype, rounds, args.seconds_per_round) if device.type == "cpu" else None}
    data["dispatch"] = dispatch.describe()["cuda"] if device.type == "cuda" else {}
    text = render_all(data)
    stem = re.sub(r"[^A-Za-z0-9]+", "-", f"{device.type}-{machine}-{args.dtype}").strip("-").lower()
    if args.quick:
        stem += "-quick"
    args.out.mkdir(parents=True, exist_ok=True)
    # measured to JSON, the markdown rendered from it (python scripts/bench.py --render <json> does it again)
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(text)
    plot(results, args.out / f"{stem}.png", f"{machine}, {args.dtype}")
    print(text)
    print(f"wrote {args.out / (stem + '.md')}, .json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
