"""Multi-process training through ``torchrun`` (PyTorch's own launcher and rendezvous).

``torchrun --nproc-per-node N -m kgrec.cli train ...`` starts N processes with
``RANK``/``WORLD_SIZE``/``MASTER_ADDR``… in the environment; :func:`init_distributed`
turns them into a process group (NCCL on CUDA, gloo on CPU) and
:func:`kgrec.fusion.train.fit` then wraps the model in
:class:`~torch.nn.parallel.DistributedDataParallel`. Nothing here starts processes.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    """True when the environment holds a ``torchrun`` world of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(backend: str = "auto") -> tuple[int, int]:
    """Join the process group ``torchrun`` prepared; returns ``(rank, world_size)``.

    A no-op returning ``(0, 1)`` outside ``torchrun``. ``backend="auto"`` picks NCCL when
    CUDA is present, else gloo. On CUDA each process uses the GPU ``LOCAL_RANK``.
    """
    if not launched_by_torchrun():
        return 0, 1
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0 (or no process group): the process that writes artifacts and reports."""
    return rank_and_world()[0] == 0


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
