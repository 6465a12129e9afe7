"""One optimiser step for any task: the task says what its loss is (`Task.loss`) and how a batch splits into
micro-batches (`Task.step_batches`); this module owns the rest, once for every task: zero the gradients,
backward through each micro-batch (under DDP the gradients are all-reduced after the last only), clip by the
task's named rule, step the optimiser and its schedule.

Clip rules (`task.optim.clip`, bound `task.optim.clip_norm`; a null bound clips nothing):
- `global`: the norm of all gradients together (torch's clip_grad_norm_; Nematus, the reader's torch port);
- `per_tensor`: each parameter tensor's gradient norm on its own (order-embedding's Theano code);
- `none`: no clipping (the weight-norm code, zero's Transformer);
- `upstream`: the Attentive Reader's Theano rule as written: the global norm n (not its square) is compared with
  bound**2, and above it every gradient becomes g * bound / sqrt(n + 1e-8) (norm bound * sqrt(n)); below, nothing.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from experiments.core.errors import UserError

if TYPE_CHECKING:
    from experiments.core.training.task import Task

CLIP_RULES = ("none", "global", "per_tensor", "upstream")


def check_clip_rule(rule: str, task: str) -> None:
    if rule not in CLIP_RULES:
        raise UserError(f"task={task}: task.optim.clip={rule} is not a clip rule; use one of {', '.join(CLIP_RULES)}")


def clip_gradients(parameters, rule: str, max_norm: float | None) -> None:
    """Clip the gradients of `parameters` in place by the named rule."""
    if rule == "none" or not max_norm:
        return
    params = [p for p in parameters if p.grad is not None]
    if rule == "global":
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    elif rule == "per_tensor":
        for p in params:
            torch.nn.utils.clip_grad_norm_([p], max_norm)
    elif rule == "upstream":  # Attentive_reader bn attentive_reader.py:349-354 with training.py:111-120
        grads = [p.grad for p in params]
        norm = torch.nn.utils.get_total_norm(grads)
        scale = torch.where(norm > max_norm**2, max_norm / torch.sqrt(norm + 1e-8), torch.ones_like(norm))
        torch._foreach_mul_(grads, scale)
    else:
        raise ValueError(f"unknown clip rule {rule!r}")


def optimizer_step(task: Task, model: nn.Module, batch: Any) -> torch.Tensor:
    """One update of `task`'s parameters from `batch`, its loss computed through `model` (the task's model or
    its DDP wrapper); returns the detached loss summed over micro-batches (a tensor: no host sync)."""
    parts = task.step_batches(batch)
    task.optimizer.zero_grad(set_to_none=True)
    total = None
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        # under DDP the gradients are all-reduced once, after the last micro-batch
        sync = model.no_sync() if not last and hasattr(model, "no_sync") else contextlib.nullcontext()
        with sync:
            loss = task.loss(model, part)
            loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    rule, max_norm = getattr(task, "clip", None) or task.clip_rule()
    clip_gradients(task.model.parameters(), rule, max_norm)
    task.optimizer.step()
    scheduler = getattr(task, "scheduler", None)
    if scheduler is not None:
        scheduler.step()
    return total
