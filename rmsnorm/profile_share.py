"""The norms' share of a training step, attributed by the profiler rather than by subtraction.

    from rmsnorm.profile_share import profiled_norm_share
    share = profiled_norm_share(model, step, steps=3)
    print(share.share, share.modules_seen, share.modules_total)

Subtracting the step time of the same model with its norms made identity (`rmsnorm.measure`) measures what the
norms cost, but the identity model can differ in more than its norms (a conv that gains a bias, a fused path
that no longer applies). Here every norm module's forward runs inside a `record_function` scope: the ops inside
it are the norm's forward, whatever they are (a fused kernel, or the generic ops of a composite norm), and the
autograd nodes those ops created (matched by the sequence number the profiler records for both) with the ops
under them are its backward. The share is their self time over the steps' time, both from the same profiled
steps.

What it cannot see: a norm computed inside another op (a recurrent cell's native op that runs its norms within
one call) never runs its module, so it is not attributed; `modules_seen` < `modules_total` says so. The
profiler's own overhead per op is charged to every op alike, which inflates the share of norms made of many
small ops (a composite norm) more than that of a fused one: compare fused with fused.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

SCOPE = "norm::"


def default_norm_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's normalisation modules, outermost only: torch's LayerNorm, RMSNorm, batch and group norms,
    and this library's norms (a norm inside a norm, as BlockNorm's blocks, belongs to its parent)."""
    from rmsnorm.blocks import BlockNorm
    from rmsnorm.norms import AffineNorm, NoNorm, StepBatchNorm

    kinds: tuple[type, ...] = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, AffineNorm, BlockNorm,
                               StepBatchNorm)
    if hasattr(nn, "RMSNorm"):
        kinds = (*kinds, nn.RMSNorm)
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, kinds) and not isinstance(module, NoNorm):
            if any(name.startswith(parent + ".") for parent, _ in found):
                continue
            found.append((name, module))
    return found


@dataclass
class ProfiledShare:
    share: float | None  # the norms' self time / the steps' time
    norm_seconds: float  # per step: forward + backward of the norm modules
    step_seconds: float  # per step, under the profiler
    forward_seconds: float
    backward_seconds: float
    modules_seen: int  # norm modules whose forward ran as a module in the profiled steps
    modules_total: int
    steps: int

    def describe(self) -> str:
        if self.share is None:
            return "no norm module ran"
        seen = ("" if self.modules_seen == self.modules_total else
                f"; only {self.modules_seen} of {self.modules_total} norm modules ran as modules (the others run "
                "inside another op, not attributed)")
        return f"{100 * self.share:.1f}% of the step (profiler-attributed, {self.steps} steps{seen})"


def _self_time(event, cuda: bool) -> float:
    """An op's own time in microseconds: on the GPU its kernels', on the CPU its host time."""
    if cuda:
        return float(getattr(event, "self_device_time_total", 0.0) or 0.0)
    return float(event.self_cpu_time_total)


def _is_backward(event) -> bool:
    """Whether the event is an autograd node's ('autograd::engine::evaluate_function: XBackward0') or runs
    inside one (the node itself, 'XBackward0' or 'torch::autograd::CppNode<...>', and its ops)."""
    while event is not None:
        if event.name.startswith("autograd::engine::evaluate_function"):
            return True
        event = event.cpu_parent
    return False


def _subtree(event) -> Iterable:
    stack = [event]
    while stack:
        e = stack.pop()
        yield e
        stack.extend(e.cpu_children)


def profiled_norm_share(model: nn.Module, step: Callable[[], object], *, steps: int = 3, warmup: int = 1,
                        norm_modules: list[tuple[str, nn.Module]] | None = None) -> ProfiledShare:
    """Profile `steps` calls of `step()` (a whole training step of `model`) with a scope around every norm
    module's forward; see the module's docstring."""
    from torch.profiler import ProfilerActivity, profile, record_function

    modules = norm_modules if norm_modules is not None else default_norm_modules(model)
    ran: set[str] = set()
    open_scopes: dict[int, list] = {}
    handles = []

    def enter(name):
        def hook(module, args):
            ran.add(name)
            scope = record_function(SCOPE + name)
            scope.__enter__()
            open_scopes.setdefault(id(module), []).append(scope)
        return hook

    def leave(module, args, output):
        stack = open_scopes.get(id(module))
        if stack:
            stack.pop().__exit__(None, None, None)

    for name, module in modules:
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    cuda = any(p.is_cuda for p in model.parameters())
    try:
        for _ in range(warmup):
            step()
        ran.clear()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            for _ in range(steps):
                with record_function("step::whole"):
                    step()
            if cuda:
                torch.cuda.synchronize()
    finally:
        for h in handles:
            h.remove()
    events = prof.events()
    whole = [e for e in events if e.name == "step::whole"]
    norm_scopes = [e for e in events if e.name.startswith(SCOPE)]
    # top-level norm scopes only: a norm module inside another's forward is part of it
    counted: dict[int, object] = {}
    forward_ids: set[int] = set()
    seq_nrs: set[int] = set()
    for scope in norm_scopes:
        parent, nested = scope.cpu_parent, False
        while parent is not None:
            if parent.name.startswith(SCOPE):
                nested = True
                break
            parent = parent.cpu_parent
        if nested:
            continue
        for e in _subtree(scope):
            forward_ids.add(id(e))
            counted[id(e)] = e
            if getattr(e, "sequence_nr", -1) is not None and e.sequence_nr >= 0:
                seq_nrs.add(e.sequence_nr)
    # the autograd nodes a scope created: every sequence number handed out while it ran, not only those of the
    # ops the profiler saw (a fused kernel called from an autograd.Function records no op of its own), i.e. those
    # between the last forward op before the scope and the first after it on the same thread
    forward_ops: dict[int, list[tuple[float, int]]] = {}
    for e in events:
        if e.sequence_nr is not None and e.sequence_nr >= 0 and not _is_backward(e):
            forward_ops.setdefault(e.thread, []).append((e.time_range.start, e.sequence_nr))
    for ops in forward_ops.values():
        ops.sort()
    for scope in norm_scopes:
        if id(scope) not in forward_ids:
            continue
        ops = forward_ops.get(scope.thread, [])
        first = bisect.bisect_left(ops, (scope.time_range.start, -1))
        last = bisect.bisect_right(ops, (scope.time_range.end, math.inf))
        # sequence numbers grow on a thread: the last before the scope and the first after it bound its own
        lo = ops[first - 1][1] if first > 0 else (ops[first][1] - 1 if first < last else None)
        hi = ops[last][1] if last < len(ops) else (ops[last - 1][1] + 1 if first < last else None)
        if lo is not None and hi is not None:
            seq_nrs.update(range(lo + 1, hi))
    forward = sum(_self_time(e, cuda) for e in counted.values())
    backward_events: dict[int, object] = {}
    for e in events:
        if id(e) in forward_ids or getattr(e, "sequence_nr", -1) not in seq_nrs:
            continue
        if not _is_backward(e):
            continue  # a forward op (of the norm, already counted, or of another module): not a backward node
        for child in _subtree(e):
            if id(child) not in forward_ids:
                backward_events[id(child)] = child
    backward = sum(_self_time(e, cuda) for e in backward_events.values())
    # the whole steps: on the GPU every kernel's time, on the CPU the steps' host time (backward included: the
    # autograd engine runs CPU work on the calling thread)
    total = sum(_self_time(e, cuda) for e in events) if cuda else sum(e.cpu_time_total for e in whole)
    n = max(1, len(whole))
    norm_s, fwd_s, bwd_s, step_s = ((forward + backward) / n / 1e6, forward / n / 1e6, backward / n / 1e6,
                                    total / n / 1e6)
    share = norm_s / step_s if (ran and step_s > 0) else None
    return ProfiledShare(share, norm_s, step_s, fwd_s, bwd_s, len(ran), len(modules), steps)
