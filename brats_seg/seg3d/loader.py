"""The 3D training dataset: patches keyed by (epoch, rank, index) for the engine's sample stream
(brats_seg.engine.loader: StreamSampler, make_loader).

Sharding: per epoch, cases are visited in a seeded permutation (cycled); rank r takes slots
r, r+W, r+2W, ... so ranks see disjoint slots of the same sequence (DistributedSampler-like).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from brats_seg.engine.loader import SampleKey, sample_rng
from brats_seg.seg3d.augment import augment_intensity, draw_spatial, random_flip
from brats_seg.seg3d.patches import CaseCache, choose_centre, crop_patch, is_forced_foreground, warped_patch
from brats_seg.seg3d.config import AugmentConfig


class PatchDataset(Dataset):
    """Patches with foreground oversampling and augmentation; item = {'image', 'label', 'case', 'fg_class'}."""

    def __init__(self, root: Path, entries: list[dict], patch_size: tuple[int, int, int],
                 fg_fraction: float, augment: AugmentConfig | None, seed: int, world_size: int = 1,
                 outside: float = 0.0, warp: Callable = warped_patch,
                 bias_channels: tuple[int, ...] | None = None) -> None:
        """`warp` reads a rotated or zoomed patch (patches.warped_patch; `bench train` swaps in the
        reference it is measured against); `bias_channels`: the channels a bias field may change."""
        if not entries:
            raise ValueError("PatchDataset needs at least one case")
        self.cases = CaseCache(root, entries)
        self.patch, self.fg_fraction, self.augment = tuple(patch_size), fg_fraction, augment
        self.seed, self.world_size, self.outside, self.warp = seed, world_size, outside, warp
        self.bias_channels = bias_channels
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
            image, label = self.warp(case, centre, matrix, self.patch)
        if self.augment:
            image = augment_intensity(image, rng, self.augment, self.bias_channels)
            image, label = random_flip(image, label, rng, self.augment)
        if label is None:
            raise ValueError(f"case {case.id} has no segmentation; training needs labelled cases")
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label),
                "fg_class": fg_class, "centre": torch.from_numpy(centre)}
