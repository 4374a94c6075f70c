"""Distributed training with PyTorch's own engine: torchrun sets the environment, DDP does the work.

``cxrscreen train --nproc N`` re-launches itself through ``torch.distributed.run`` (what ``torchrun`` is), so
``torchrun --nproc_per_node=N -m cxrscreen train ...`` and ``cxrscreen train --nproc N ...`` are the same run.
Machines need not share a disk (``torchrun --nnodes 2 --node-rank R --master-addr HOST ...``): what rank 0 decides
(the split, the class weights, the resume point) reaches the other ranks through the process group
(:func:`broadcast_from_main`), never through a file.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from cxrscreen.errors import ConfigError, DatasetLayoutError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, how many processes, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the process's GPU when CUDA is available, else the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA GPU is available")
    if name in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device_name: str) -> DistContext:
    """Join the process group torchrun set up (gloo on CPU, nccl on GPU), or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda" and world_size > 1:
        check_nproc(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), device_name)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over all ranks (identity when running alone)."""
    if ctx.distributed:
        values = values.to(ctx.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values.cpu()


def wrap_model(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """The module a training step calls: under DDP a wrapper whose backward averages the gradients over the ranks
    (so every rank takes the same step, that of the global batch), else the model itself."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def broadcast_from_main(value: T, ctx: DistContext) -> T:
    """Rank 0's ``value`` on every rank (pickled through the process group; other ranks may pass None). Alone: ``value``."""
    if not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=ctx.device if ctx.device.type == "cuda" else None)
    return box[0]


def check_same_as_main(fingerprint: str, what: str, ctx: DistContext) -> None:
    """Raise the same :class:`DatasetLayoutError` on every rank when a rank's ``fingerprint`` of ``what`` differs
    from rank 0's (e.g. a node whose copy of a collection lacks or cannot read some images): ranks training on
    different images would silently train a different model than the split says."""
    if not ctx.distributed:
        return
    gathered: list = [None] * ctx.world_size
    dist.all_gather_object(gathered, (socket.gethostname(), fingerprint))
    differing = [f"rank {rank} on {host}" for rank, (host, other) in enumerate(gathered) if other != gathered[0][1]]
    if differing:
        raise DatasetLayoutError(f"{', '.join(differing)}: {what} differ(s) from rank 0's on {gathered[0][0]}; every "
                                 "machine needs the same readable copy of the collections at the same paths")


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def check_nproc(nproc: int, device_name: str, gpu_count: int | None = None) -> None:
    """Refuse ``--nproc N`` before launching when its ranks would share a GPU (nccl cannot run two ranks on one)."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    gpus = torch.cuda.device_count() if gpu_count is None else gpu_count
    if device_name == "cuda" and gpus == 0:
        raise ConfigError("--device cuda asked for, but no CUDA GPU is available")
    if device_name in ("cuda", "auto") and 0 < gpus < nproc:
        raise ConfigError(
            f"--nproc {nproc} needs one GPU per process, but {gpus} GPU(s) are visible: use --nproc {gpus}, "
            "or --device cpu for gloo processes on the CPU"
        )


def launch_torchrun(nproc: int, argv: list[str], device_name: str = "auto") -> int:
    """Run ``python -m torch.distributed.run --nproc_per_node=N -m cxrscreen ARGV`` and return its exit code
    (after :func:`check_nproc`, so that a mistake is one line here rather than an error in every rank)."""
    check_nproc(nproc, device_name)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "cxrscreen", *argv]
    return subprocess.call(command)
