"""Multi-process training under ``torchrun``: the process group, the rank's slice, gathers with gradient.

``torchrun --nproc-per-node N -m server.cli train ...`` starts N processes and sets ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` in each; without them (or with ``WORLD_SIZE=1``) every helper here is a
no-op and training is the single-process code path, unchanged.

- :func:`init` starts the process group once per process: NCCL on CUDA (the rank's GPU is
  ``cuda:LOCAL_RANK`` when the device is plain ``cuda``), Gloo on the CPU.
- Every global batch of ``G`` images is split into ``G / N`` images per rank (:func:`rank_slice`).
- :func:`gather` concatenates a tensor over the ranks (rank order) and keeps the gradient: the
  backward pass sums every rank's gradient into the owner's slice. A loss computed on gathered
  tensors is the same value on every rank, so after DDP averages the parameter gradients a step of
  N ranks x B images equals one process's step on the N*B images (tests/shared/test_ddp.py).
- :func:`wrap` puts a module under ``DistributedDataParallel``. On CUDA it first turns BatchNorm into
  ``torch.nn.SyncBatchNorm`` (statistics over the global batch, as one process would compute them).
  ``SyncBatchNorm`` refuses CPU tensors (torch 2.13: "SyncBatchNorm expected input tensor to be on
  GPU ..."), with Gloo too, so on the CPU BatchNorm stays per rank: each rank normalises its own
  slice, which equals one process running the encoder on each rank's slice separately.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints, writes checkpoints and resume states."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def env_world() -> World:
    """The world torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def current() -> World:
    """The running process group's world, or a single process when none is started."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return World()
    return World(dist.get_rank(), dist.get_world_size(), env_world().local_rank)


def rank_device(device: torch.device, world: World) -> torch.device:
    """Plain ``cuda`` means the rank's own GPU (``cuda:LOCAL_RANK``); any other device is kept."""
    if world.distributed and device.type == "cuda" and device.index is None:
        return torch.device("cuda", world.local_rank)
    return device


def init(device: torch.device, timeout: timedelta | None = None) -> tuple[World, torch.device]:
    """Start the process group when launched by torchrun (idempotent); returns the world and the
    device this rank trains on. A single process gets ``World()`` and ``device`` back unchanged."""
    if dist.is_available() and dist.is_initialized():
        world = current()
        return world, rank_device(device, world)
    world = env_world()
    if not world.distributed:
        return world, device
    device = rank_device(device, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    return current(), device


def shutdown() -> None:
    """Wait for every rank, then end the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextmanager
def process_group(device: torch.device, timeout: timedelta | None = None) -> Iterator[World]:
    """``init`` on entry, ``shutdown`` on a normal exit (an error leaves the others to torchrun)."""
    world, _ = init(device, timeout)
    yield world
    shutdown()


def barrier() -> None:
    if current().distributed:
        dist.barrier()


def local_batch(global_batch: int, world: World) -> int:
    """Images per rank in a global batch; the global batch must split evenly."""
    if global_batch % world.size:
        raise ValueError(f"batch size {global_batch} does not split over {world.size} processes; "
                         f"use a multiple of {world.size}")
    return global_batch // world.size


def rank_slice(step: int, global_batch: int, world: World) -> slice:
    """This rank's positions in the ``step``-th global batch of an epoch's order."""
    b = local_batch(global_batch, world)
    start = step * global_batch + world.rank * b
    return slice(start, start + b)


def rank_seed(*key: int) -> int:
    """A 63-bit seed for a tuple of integers (seed, epoch, rank): the rank's own random stream."""
    return int(np.random.SeedSequence(list(key)).generate_state(2, np.uint64)[0] >> np.uint64(1))


def gather(t: torch.Tensor) -> torch.Tensor:
    """``t`` of every rank concatenated along dim 0 in rank order, with gradient; ``t`` alone outside
    a process group. The backward pass gives each rank the sum of all ranks' gradients of its slice."""
    world = current()
    if not world.distributed:
        return t
    if not t.requires_grad:
        parts = [torch.empty_like(t) for _ in range(world.size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)
    import torch.distributed.nn.functional as dnf

    with warnings.catch_warnings():
        # torch 2.13 marks it deprecated in favour of a private module; it is the public autograd gather
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dnf.all_gather(t.contiguous()))


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean of a (detached) tensor over the ranks; ``t`` itself outside a process group."""
    world = current()
    if not world.distributed:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / world.size


def broadcast(obj: object) -> object:
    """Rank 0's ``obj`` on every rank (pickled between the ranks of one job); ``obj`` outside a group."""
    if not current().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` under DistributedDataParallel, or ``module`` itself outside a process group.

    On CUDA the BatchNorm layers inside ``module`` are first replaced, in place, by SyncBatchNorm
    layers that share their parameters and running statistics (:func:`has_sync_batchnorm` tells;
    load the state dict into a freshly built model to get plain BatchNorm back).
    """
    world = current()
    if not world.distributed:
        return module
    if device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # in place below the top: references stay valid
        return nn.parallel.DistributedDataParallel(module, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(module)


def has_sync_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.SyncBatchNorm) for m in module.modules())


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


__all__ = ["World", "barrier", "broadcast", "current", "env_world", "gather", "has_sync_batchnorm", "init", "local_batch",
           "mean_over_ranks", "process_group", "rank_device", "rank_seed", "rank_slice", "shutdown", "unwrap", "wrap"]
