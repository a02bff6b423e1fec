"""torch.distributed plumbing for ``torchrun --nproc_per_node=N -m aperture_zoo.train``.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything here is a no-op, so the
single-process path has no distributed code in it at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from aperture_zoo.errors import ApertureError

_T = TypeVar("_T")


class DistributedError(ApertureError, RuntimeError):
    """A multi-process launch that cannot work as configured."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # Only the caller that created the process group may destroy it: a group destroyed under a caller
    # that made it (a script running two fits) would be re-created on the same port by each rank at
    # its own pace, and a rank that reaches the stale store first waits forever.
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error with a fix."""
    if preference not in ("auto", "cuda", "cpu"):
        raise DistributedError(f"--device must be auto, cuda or cpu, not {preference!r}")
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DistributedError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device("cuda", local_rank)


def setup(preference: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(preference)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    info = DistInfo(rank, world, local_rank, owns_group=not dist.is_initialized())
    device = resolve_device(preference, info.local_rank)
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                "lower --nproc_per_node"
            )
        torch.cuda.set_device(device)
    if info.owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks in place (identity when single-process)."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's value of a small Python object on every rank (e.g. the run directory)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def decided_on_rank0(info: DistInfo, decide: Callable[[], _T]) -> _T:
    """Run ``decide`` on rank 0 only and hand every rank its result, or the ApertureError it raised.

    File-system decisions (which folder, is the data there) must be taken once: ranks deciding
    separately could pick different folders, and a rank that fails alone would leave the others
    waiting at the next collective.
    """
    value: Any = None
    error: ApertureError | None = None
    if info.is_main:
        try:
            value = decide()
        except ApertureError as exc:
            error = exc
    value, error = broadcast_object((value, error), info)  # type: ignore[misc]
    if error is not None:
        raise error
    return value


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """Destroy the process group only where :func:`setup` created it (see ``DistInfo.owns_group``)."""
    if info.enabled and info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
