"""Shared memory for loader workers, checked once when a loader with workers starts.

Each batch a worker collates reaches the rank through shared memory (/dev/shm). A container's
default /dev/shm is 64 MB, smaller than one collated 2 x 4 x 128^3 float32 batch (67 MB): workers
then die of a bus error at step 1, with nothing that names the cause. Here the loader's need is
estimated from one real sample (so shapes, channels and dtypes are exact for any task) and
compared with the free space of /dev/shm, and a shortfall is one InputError line with the fixes.

The estimate: the DataLoader keeps prefetch_factor x num_workers batches in flight, each in shared
memory until the rank has used it, plus the batch the rank is training on; every rank of the node
(torchrun's LOCAL_WORLD_SIZE) has its own loader in the same /dev/shm.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from brats_seg.errors import InputError

SHM = Path("/dev/shm")


def batch_bytes(sample: Any, batch_size: int) -> int:
    """Bytes of one collated batch of `batch_size` samples like `sample` (tensors, arrays, numbers
    inside dicts, lists and tuples; numbers collate to 8-byte tensors, strings take no shared memory)."""
    if isinstance(sample, torch.Tensor):
        return sample.numel() * sample.element_size() * batch_size
    if isinstance(sample, np.ndarray):
        return sample.nbytes * batch_size
    if isinstance(sample, dict):
        return sum(batch_bytes(v, batch_size) for v in sample.values())
    if isinstance(sample, (list, tuple)):
        return sum(batch_bytes(v, batch_size) for v in sample)
    return 8 * batch_size if isinstance(sample, (int, float, bool)) else 0


def loader_need(batch: int, num_workers: int, prefetch_factor: int, local_ranks: int = 1) -> int:
    """Shared-memory bytes the loaders of one node hold at most (see the module docstring)."""
    return (num_workers * prefetch_factor + 1) * batch * local_ranks


def free_bytes(path: Path = SHM) -> int | None:
    """Free bytes of the file system at `path` for an unprivileged writer; None where it is absent."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def check_shared_memory(loader: DataLoader, rank: int, path: Path = SHM) -> None:
    """Refuse to start worker processes whose batches cannot fit in `path` (exit 2, one line)."""
    if loader.num_workers == 0:
        return
    free = free_bytes(path)
    if free is None:  # no /dev/shm (not Linux): nothing to check
        return
    batch = batch_bytes(loader.dataset[(0, rank, 0)], loader.batch_size or 1)
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    prefetch = loader.prefetch_factor or 2
    need = loader_need(batch, loader.num_workers, prefetch, local_ranks)
    if need <= free:
        return
    ranks = f" x {local_ranks} ranks on this node" if local_ranks > 1 else ""
    raise InputError(path, f"{_mb(free)} free, but the training loader needs about {_mb(need)}: "
                           f"({loader.num_workers} workers x prefetch {prefetch} + 1) batches of "
                           f"{_mb(batch)}{ranks}; give the container more shared memory (docker run "
                           f"--shm-size={suggest_size(need)}, or --ipc=host) or set data.num_workers=0")


def suggest_size(need: int) -> str:
    """A --shm-size with a quarter of headroom: whole GiB, or 256 MiB steps below 1 GiB."""
    want = need * 1.25
    if want <= 2**30:
        return f"{256 * math.ceil(want / 2**28)}m"
    return f"{math.ceil(want / 2**30)}g"


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"
