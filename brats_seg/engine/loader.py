"""The training sample stream every task uses: a map-style dataset keyed by (epoch, rank, index)
and a sampler that yields those keys from any position.

Why keys instead of worker RNG state: each sample draws from its own RNG seeded with
(seed, epoch, rank, index), so the stream is identical for any number of workers, and a resume at
step k only has to start the sampler at index k·batch — nothing about workers needs saving.
The task's dataset decides what a key means (seg3d.loader.PatchDataset, seg2d.build.TrainStream).
"""
from __future__ import annotations

import atexit
import functools
import signal
import weakref
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from brats_seg.engine.config import epoch_steps
from brats_seg.engine.runtime import WORKER_SIGNALS
from brats_seg.engine.shm import check_shared_memory

SampleKey = tuple[int, int, int]  # (epoch, rank, index within the rank's epoch)


def sample_rng(seed: int, epoch: int, rank: int, index: int) -> np.random.Generator:
    """The generator of one sample: a pure function of its key."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, rank, index]))


class StreamSampler(Sampler):
    """Yields (epoch, rank, index) for index in [start, samples_per_epoch); set_position moves it."""

    def __init__(self, samples_per_epoch: int, rank: int = 0) -> None:
        self.samples_per_epoch, self.rank = samples_per_epoch, rank
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[SampleKey]:
        return ((self.epoch, self.rank, i) for i in range(self.start, self.samples_per_epoch))

    def __len__(self) -> int:
        return self.samples_per_epoch - self.start


def _worker_init(seed: int, rank: int, worker_id: int) -> None:
    """Seed each worker's global RNGs from (seed, rank, worker id) for any library code that uses
    them; one intra-op thread per worker so workers do not fight the training step for cores.

    SIGTERM and SIGINT are ignored: a pre-emption signals the whole process group, and a worker
    that died of it would fail the rank's next batch; the rank stops and closes its workers
    (close_loader). The rank forks workers with both blocked (StopFlag.held), unblocked here."""
    import random

    for sig in WORKER_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)
    torch.set_num_threads(1)
    ss = np.random.SeedSequence([seed, rank, worker_id, 0xD47A])
    state = ss.generate_state(2)
    random.seed(int(state[0]))
    np.random.seed(int(state[1]))
    torch.manual_seed(int(ss.generate_state(1, np.uint64)[0]))


def make_loader(dataset: Dataset, sampler: StreamSampler, batch_size: int, num_workers: int,
                seed: int, rank: int, pin_memory: bool) -> DataLoader:
    """DataLoader over the stream; its own generator so creating iterators never touches torch's global RNG."""
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        pin_memory=pin_memory, drop_last=False, persistent_workers=num_workers > 0,
        worker_init_fn=functools.partial(_worker_init, seed, rank) if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed * 1000 + rank),
        prefetch_factor=2 if num_workers > 0 else None,
    )
    if num_workers > 0:
        _OPEN.add(loader)
    return loader


_OPEN: "weakref.WeakSet[DataLoader]" = weakref.WeakSet()  # loaders whose workers may be running


def close_loader(loader: DataLoader) -> None:
    """Stop a loader's persistent workers now: they ignore SIGTERM, so multiprocessing's exit
    handler (terminate, then join without a timeout) could wait for them forever. torch's own
    shutdown first (workers finish the sample at hand), then SIGKILL for any that did not exit."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is None:
        return
    workers = list(getattr(iterator, "_workers", []) or [])
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)
    loader._iterator = None
    _OPEN.discard(loader)


@atexit.register
def _close_open_loaders() -> None:
    """Safety net for an exit path that did not close its loader (registered after torch's and
    multiprocessing's exit handlers, so it runs before them)."""
    for loader in list(_OPEN):
        close_loader(loader)


def samples_per_epoch(cfg: Any, world_size: int = 1) -> int:
    """Samples one rank draws per epoch: its steps (engine.config.epoch_steps: shared among ranks
    under distributed.scaling=samples) x accumulation x batch."""
    return epoch_steps(cfg, world_size) * cfg.optim.grad_accum * cfg.data.batch_size


def stream_loader(dataset: Dataset, cfg: Any, rank: int, device: torch.device,
                  world_size: int = 1) -> tuple[DataLoader, StreamSampler]:
    """(DataLoader, StreamSampler) of one rank over a task's keyed dataset, sized by the config."""
    sampler = StreamSampler(samples_per_epoch(cfg, world_size), rank)
    loader = make_loader(dataset, sampler, cfg.data.batch_size, cfg.data.num_workers, cfg.seed, rank,
                         pin_memory=device.type == "cuda")
    check_shared_memory(loader, rank)  # workers' batches must fit in /dev/shm (Docker: 64 MB)
    return loader, sampler
