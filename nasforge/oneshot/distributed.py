"""Data-parallel supernet training on torch's own distributed package (DDP; gloo on CPU).

Started by ``torchrun`` (or anything that sets torchrun's environment: ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; Ray Train's TorchTrainer does)::

    torchrun --standalone --nproc-per-node 2 -m nasforge search examples/oneshot.yaml
    torchrun --nnodes 2 --node-rank 0 --rdzv-endpoint HEAD:29500 -m nasforge ofa train cfg.yaml

Every process runs the same command. Rank 0 (the *main* process) owns the run: the run
directory, its lock, the store, checkpoints, the log and everything after training (search,
final, report). The other ranks build the same dataset, space and trainer from the same
config, follow rank 0's resume decision (:func:`broadcast_object`), train in lock step and
exit when training ends. Data parallelism is DDP's: each rank computes the gradients of its
slice of every global batch (:func:`shard`), DDP averages them, so one step sees the same
global batch as a single process would (batch-norm statistics are per rank).

Nothing here is a scheduler or a communication scheme of our own: process groups, gradient
averaging and collectives are torch.distributed's. Without torchrun's environment every
function is a no-op on a single-process context, so the trainers run unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")

#: how long a collective waits for the other ranks before the run fails (gloo's default is 30 min)
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel job (``world_size == 1``: alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """Whether there is more than one process (DDP is used)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that owns the run (store, lock, files)."""
        return self.rank == 0

    def to_dict(self) -> dict[str, int]:
        return {"rank": self.rank, "world_size": self.world_size, "local_rank": self.local_rank}


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected an integer (set by torchrun)") from None


def from_env() -> DistContext:
    """The context torchrun's environment describes (alone when ``WORLD_SIZE`` is unset)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world}: not a valid torchrun environment")
    return DistContext(rank, world, _env_int("LOCAL_RANK", 0))


_CONTEXT = DistContext()


def init(timeout_s: float = DEFAULT_TIMEOUT_S) -> DistContext:
    """Join the process group torchrun's environment describes (gloo; once per process) and
    return this process's context; alone (no environment) returns the single context."""
    global _CONTEXT
    ctx = from_env()
    if ctx.active and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            "gloo", rank=ctx.rank, world_size=ctx.world_size, timeout=timedelta(seconds=timeout_s)
        )
    _CONTEXT = ctx
    return ctx


def current() -> DistContext:
    """This process's context: the one :func:`init` joined, or alone."""
    if _CONTEXT.active and not torch.distributed.is_initialized():
        return DistContext()
    return _CONTEXT


def shutdown() -> None:
    """Leave the process group (after training; rank 0 goes on alone)."""
    global _CONTEXT
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _CONTEXT = DistContext()


def wrap(module: nn.Module, ctx: DistContext | None = None, find_unused: bool = True) -> nn.Module:
    """``module`` in DDP when the job has several processes, else ``module`` itself.

    ``find_unused`` (DDP's ``find_unused_parameters``): a supernet step runs one path (SPOS)
    or one subnet (OFA), so most parameters get no gradient in a given forward; DDP must not
    wait for them. A mixed-op network (DARTS) uses every parameter: ``False`` spares the
    graph traversal (and DDP's warning that none was unused).
    """
    ctx = ctx or current()
    if not ctx.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, find_unused_parameters=find_unused)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or ``module``)."""
    inner = getattr(module, "module", None)
    from torch.nn.parallel import DistributedDataParallel

    return inner if isinstance(module, DistributedDataParallel) and inner is not None else module


def shard(batch_index: torch.Tensor, ctx: DistContext | None = None) -> torch.Tensor:
    """This rank's contiguous slice of one global batch's sample indices (all of it alone)."""
    ctx = ctx or current()
    if not ctx.active:
        return batch_index
    return torch.tensor_split(batch_index, ctx.world_size)[ctx.rank]


def all_reduce_mean_(tensors: list[torch.Tensor], ctx: DistContext | None = None) -> None:
    """Average ``tensors`` over the ranks in place (for gradients DDP does not own, such as
    DARTS' architecture weights, which live outside the wrapped network)."""
    ctx = ctx or current()
    if not ctx.active:
        return
    for t in tensors:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        t.div_(ctx.world_size)


def broadcast_object(obj: T, ctx: DistContext | None = None) -> T:
    """Rank 0's ``obj`` on every rank (a picklable value: the resume epoch, a path)."""
    ctx = ctx or current()
    if not ctx.active:
        return obj
    box: list[Any] = [obj if ctx.is_main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext | None = None) -> None:
    """Wait for every rank (rank 0 wrote a checkpoint the others will read)."""
    ctx = ctx or current()
    if ctx.active:
        torch.distributed.barrier()
