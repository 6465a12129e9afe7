"""Training batches built beside the model instead of between its steps: a DataLoader worker process runs the
task's `batches()` generator (the same batches in the same order: one worker, no reordering) and hands them
over in pinned memory, so the copy to the GPU overlaps the step. `task.loader_workers=0` (the default, and
what CPU runs want) builds them in the training process."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from experiments.core.errors import UserError


class _Batches(IterableDataset):
    def __init__(self, make: Callable[[], Iterator[Any]]):
        self.make = make

    def __iter__(self):
        return iter(self.make())


def background(make: Callable[[], Iterator[Any]], workers: int, pin: bool, prefetch: int = 4) -> Iterator[Any]:
    """The batches `make()` yields, built in a worker process when workers > 0 (batches on the CPU)."""
    if workers <= 0:
        return make()
    if workers > 1:
        raise UserError(f"task.loader_workers={workers}: the batches come from one generator in a fixed order, so "
                        "one worker builds them (0: in the training process, 1: beside it)")
    # fork: the worker gets the task's data without pickling it (it never touches CUDA: batches are CPU tensors)
    context = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    # a generator of its own: by default the loader seeds its workers from the global random stream, which
    # would move the model's dropout draws
    loader = DataLoader(_Batches(make), batch_size=None, num_workers=1, pin_memory=pin, prefetch_factor=prefetch,
                        multiprocessing_context=context, generator=torch.Generator().manual_seed(0))
    return _user_errors_told_plainly(iter(loader))


def _user_errors_told_plainly(batches: Iterator[Any]) -> Iterator[Any]:
    """A UserError raised in the worker arrives with the worker's traceback as its message; keep its own line."""
    try:
        yield from batches
    except UserError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise type(exc)(lines[-1].split(": ", 1)[-1] if lines else str(exc)) from None


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch's tensors on the device; from pinned memory the copy does not block the host."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(t, device) for t in batch)
    return batch
