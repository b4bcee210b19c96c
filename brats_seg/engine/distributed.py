"""torchrun (env://) detection and the few collectives the trainers need.

Launched by torchrun, the environment has RANK, WORLD_SIZE and LOCAL_RANK; then the process
group starts with gloo on CPU or NCCL on CUDA and an explicit timeout, so a rank that dies or
hangs makes the others fail within the timeout instead of waiting forever. Without those
variables everything here degrades to single-process no-ops. Every rank calls every collective
in the same order (validation included); only rank 0 writes files.
"""
from __future__ import annotations

import datetime as _dt
import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> when CUDA is available, else cpu."""
    from brats_seg.errors import InputError

    if preference == "cuda" and not torch.cuda.is_available():
        raise InputError("train.device", "cuda was requested but torch sees no CUDA device; use device=auto or cpu")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))


def init_distributed(device_pref: str = "auto", backend: str = "auto", timeout_s: float = 120.0) -> DistInfo:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1); otherwise single process."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = pick_device(device_pref, local_rank)
    if world <= 1:
        return DistInfo(device=device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {}
    if backend == "nccl" and "device_id" in inspect.signature(dist.init_process_group).parameters:
        kwargs["device_id"] = device  # binds the communicator to this GPU eagerly (torch >= 2.3)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                timeout=_dt.timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(rank, world, local_rank, device, backend)


def shutdown(info: DistInfo) -> None:
    if info.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks, in place (a no-op on one process)."""
    if info.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def mean_over_ranks(total: float, count: int, info: DistInfo) -> float:
    """sum(total) / sum(count) over ranks (NaN when nothing was counted): every rank gets the same."""
    t = all_reduce_sum(torch.tensor([total, float(count)], dtype=torch.float64, device=info.device), info)
    return float(t[0] / t[1]) if float(t[1]) > 0 else float("nan")


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True if any rank says True: all ranks stop (or checkpoint) at the same step."""
    if not info.is_distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank (small objects: RNG states)."""
    if not info.is_distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.is_distributed:
        dist.barrier()
