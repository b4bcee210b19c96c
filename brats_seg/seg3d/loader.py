"""Training data stream: a map-style dataset keyed by (epoch, rank, index) and a sampler that
yields those keys from any position.

Why keys instead of worker RNG state: each sample draws from its own Generator seeded with
(seed, epoch, rank, index), so the stream is identical for any number of workers, and a resume at
step k only has to start the sampler at index k·batch — nothing about workers needs saving.
Sharding: per epoch, cases are visited in a seeded permutation (cycled); rank r takes slots
r, r+W, r+2W, ... so ranks see disjoint slots of the same sequence (DistributedSampler-like).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from brats_seg.seg3d.augment import augment_intensity, draw_spatial, random_flip
from brats_seg.seg3d.patches import CaseCache, choose_centre, crop_patch, is_forced_foreground, warped_patch
from brats_seg.seg3d.config import AugmentConfig

SampleKey = tuple[int, int, int]  # (epoch, rank, index within the rank's epoch)


def sample_rng(seed: int, epoch: int, rank: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, rank, index]))


class PatchDataset(Dataset):
    """Patches with foreground oversampling and augmentation; item = {'image', 'label', 'case', 'fg_class'}."""

    def __init__(self, root: Path, entries: list[dict], patch_size: tuple[int, int, int],
                 fg_fraction: float, augment: AugmentConfig | None, seed: int, world_size: int = 1,
                 outside: float = 0.0) -> None:
        if not entries:
            raise ValueError("PatchDataset needs at least one case")
        self.cases = CaseCache(root, entries)
        self.patch, self.fg_fraction, self.augment = tuple(patch_size), fg_fraction, augment
        self.seed, self.world_size, self.outside = seed, world_size, outside
        self._perm_key: tuple[int, int] | None = None
        self._perm = np.arange(len(entries))

    def __len__(self) -> int:  # nominal; the sampler decides how many samples an epoch has
        return len(self.cases.entries)

    def case_index(self, epoch: int, rank: int, index: int) -> int:
        """Which case slot (index·W + rank) of this epoch's cycled permutation the sample uses."""
        n = len(self.cases.entries)
        slot = index * self.world_size + rank
        cycle = slot // n
        if self._perm_key != (epoch, cycle):
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, cycle, 0x5EED]))
            self._perm, self._perm_key = rng.permutation(n), (epoch, cycle)
        return int(self._perm[slot % n])

    def __getitem__(self, key: SampleKey) -> dict:
        epoch, rank, index = key
        rng = sample_rng(self.seed, epoch, rank, index)
        case = self.cases.get(self.case_index(epoch, rank, index))
        centre, fg_class = choose_centre(case, self.patch, is_forced_foreground(index, self.fg_fraction), rng,
                                         self.outside)
        matrix = draw_spatial(rng, self.augment) if self.augment else None
        if matrix is None:
            image, label = crop_patch(case, centre, self.patch)
        else:
            image, label = warped_patch(case, centre, matrix, self.patch)
        if self.augment:
            image = augment_intensity(image, rng, self.augment)
            image, label = random_flip(image, label, rng, self.augment)
        if label is None:
            raise ValueError(f"case {case.id} has no segmentation; training needs labelled cases")
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label),
                "fg_class": fg_class, "centre": torch.from_numpy(centre)}


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
    them; one intra-op thread per worker so workers do not fight the training step for cores."""
    import random

    torch.set_num_threads(1)
    ss = np.random.SeedSequence([seed, rank, worker_id, 0xD47A])
    state = ss.generate_state(2)
    random.seed(int(state[0]))
    np.random.seed(int(state[1]))
    torch.manual_seed(int(ss.generate_state(1, np.uint64)[0]))


def make_loader(dataset: PatchDataset, sampler: StreamSampler, batch_size: int, num_workers: int,
                seed: int, rank: int, pin_memory: bool) -> DataLoader:
    """DataLoader over the stream; its own generator so creating iterators never touches torch's global RNG."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        pin_memory=pin_memory, drop_last=False, persistent_workers=num_workers > 0,
        worker_init_fn=functools.partial(_worker_init, seed, rank) if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed * 1000 + rank),
        prefetch_factor=2 if num_workers > 0 else None,
    )
