"""Data-parallel training under `torchrun`: one process per device, DistributedDataParallel (nccl on CUDA,
gloo on CPU), every rank building the same global batch in the (seed, epoch) order and taking its slice.

What a single process does stays as it is: without torchrun's environment (WORLD_SIZE unset or 1) nothing here
changes a run. Rank 0 alone writes files and logs; every rank evaluates (the models are identical, so the
results are), which keeps a long evaluation from holding the other ranks at a barrier past its timeout.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from experiments.core.errors import UserError


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Group()


def from_environment() -> Group:
    """The process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK), or SINGLE.
    A submitit job of several tasks (SLURM `hydra.launcher.tasks_per_node=4 gpus_per_node=4`, or the local
    executor's) is described in submitit's terms first; its own helper turns them into torchrun's."""
    if "WORLD_SIZE" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            # MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK; the GPUs stay visible: we pick cuda:LOCAL_RANK
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return Group(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def current() -> Group:
    """This process's group once `init` ran (SINGLE without torchrun)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


_control = None  # a gloo group for the small per-step agreements: a CPU tensor, no GPU sync


def init(group: Group, device: torch.device) -> None:
    """Joins the process group (once per process)."""
    global _control
    if not group.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=group.rank, world_size=group.world,
                            device_id=device if device.type == "cuda" else None)
    _control = dist.new_group(backend="gloo") if device.type == "cuda" else None


def check_batch_size(group: Group, batch_size: int) -> None:
    if group.enabled and batch_size % group.world:
        raise UserError(f"task.batch_size={batch_size} is the global batch, split over {group.world} processes: "
                        f"it must be a multiple of {group.world}; change it or the number of processes")


def shard(batch: Sequence[Any], dims: Sequence[int], group: Group) -> tuple[Any, ...]:
    """This rank's slice of a global batch: element i split along its batch dimension dims[i] (time-major
    sequence tensors carry the batch in dimension 1) into equal contiguous parts, so that the mean of the
    ranks' means is the batch mean and gathered slices line up. A batch that does not divide (an epoch's
    short last batch; full batches divide, `check_batch_size`) loses its last n % W rows; one with fewer
    rows than processes gives each rank one row, some twice, rather than an empty slice."""
    if not group.enabled:
        return tuple(batch)
    if len(dims) != len(batch):
        raise ValueError(f"the task's batch_dims {tuple(dims)} name {len(dims)} elements, its batch has {len(batch)}")
    n = batch[0].shape[dims[0]]
    if n >= group.world:
        per = n // group.world
        return tuple(t.narrow(d, group.rank * per, per) for t, d in zip(batch, dims, strict=True))
    return tuple(t.narrow(d, group.rank % n, 1) for t, d in zip(batch, dims, strict=True))


def sum_over_ranks(value: torch.Tensor, group: Group) -> torch.Tensor:
    """The sum of a tensor over the ranks, outside autograd (itself in a single process)."""
    if not group.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value


def mean_over_ranks(value: torch.Tensor, group: Group) -> torch.Tensor:
    """The mean of a tensor over the ranks (itself in a single process)."""
    if not group.enabled:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / group.world


def max_over_ranks(value: int, group: Group) -> int:
    """The largest of the ranks' values, on every rank (a stop signal's number, 0 where none arrived), through
    a CPU group: a per-step agreement must not wait for the GPU."""
    if not group.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control)
    return int(t.item())


def any_rank(flag: bool, group: Group) -> bool:
    """True on every rank when it is true on one."""
    return bool(max_over_ranks(int(flag), group))


def gather_objects(obj: Any, group: Group) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank ([obj] in a single process)."""
    if not group.enabled:
        return [obj]
    out: list[Any] = [None] * group.world
    dist.all_gather_object(out, obj)
    return out


def gather_with_grad(t: torch.Tensor, group: Group) -> torch.Tensor:
    """Every rank's `t` concatenated in rank order (dimension 0), with gradients flowing back to each rank's
    part: for a loss over the whole global batch (the retrieval task's contrastive loss). Every rank then
    computes the same loss; the gather's backward sums its W copies' gradients and DDP's mean divides by W,
    so the weights get the gradient of the global-batch loss."""
    if not group.enabled:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t), 0)


def shutdown() -> None:
    global _control
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _control = None
