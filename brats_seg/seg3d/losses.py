"""Segmentation losses: soft Dice + cross-entropy, in label (softmax) or region (sigmoid) mode.

Canonical labels: 0 background, 1 NCR, 2 ED, 3 ET. BraTS scores the nested regions
WT = {1,2,3} ⊇ TC = {1,3} ⊇ ET = {3} (io/labels.py REGIONS; tensor conversions in io/regions.py),
so "regions" mode trains three sigmoid channels on them directly; "labels" mode trains a softmax
over the label classes.

Soft Dice for one channel c (sums over voxels, and over the batch when `batch_dice`):

    dice_loss_c = 1 - (2 * sum(p * t) + smooth_nr) / (sum(p) + sum(t) + smooth_dr)

and the Dice term is the mean over channels (and samples, when not `batch_dice`). The small
smooth terms (1e-5 by default, MONAI's defaults) avoid 0/0 and make "empty target, empty
prediction" a loss of ~0 without noticeably biasing non-empty channels. Batch Dice (nnU-Net's
default) pools voxels over the batch so patches without a region do not give a noisy 0-or-1 term.

MONAI's DiceCELoss matches "labels" mode (a test checks it), but with several sigmoid channels it
applies softmax cross-entropy, which is wrong for overlapping regions, so both modes are written
out here.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from brats_seg.io.labels import NUM_LABELS
from brats_seg.io.regions import labels_to_regions, squeeze_labels

MODES = ("regions", "labels")


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, batch_dice: bool = True,
                   smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                   channel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over channels (and samples unless batch_dice) of 1 - soft Dice; inputs (B,C,*S).
    `channel_weights` (C,), normalised to mean 1, weighs the channels' terms."""
    dims = [0, *range(2, probs.ndim)] if batch_dice else list(range(2, probs.ndim))
    intersection = (probs * target).sum(dims)
    denominator = probs.sum(dims) + target.sum(dims)
    loss = 1.0 - (2.0 * intersection + smooth_nr) / (denominator + smooth_dr)
    if channel_weights is not None:
        loss = loss * channel_weights.to(loss.device)  # (C,) or (B, C): the channel axis is last
    return loss.mean()


def _normalised_weights(weights: Sequence[float] | None) -> torch.Tensor | None:
    """Region weights scaled to mean 1 (so the loss keeps its scale); None when all equal."""
    if weights is None:
        return None
    w = torch.tensor([float(v) for v in weights], dtype=torch.float32)
    if w.numel() != 3 or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"region_weights must be 3 finite values >= 0 (WT, TC, ET) with a positive sum, got {weights}")
    return None if bool((w == w[0]).all()) else w * (3.0 / w.sum())


class DiceCELoss(nn.Module):
    """dice_weight * soft Dice + ce_weight * cross-entropy, on logits.

    mode="labels": softmax over C classes; target = integer labels (B,*S) or (B,1,*S); Dice over
    classes 1..C-1 unless include_background; CE over all classes. Works for any C and 2D or 3D.
    mode="regions": sigmoid per channel (WT, TC, ET); target = canonical labels (converted with
    labels_to_regions) or float region masks (B,3,*S); Dice + BCE-with-logits over all 3 channels,
    each channel's terms weighted by `region_weights` (WT, TC, ET; scaled to mean 1): a heavier
    ET term spends more of the gradient on the smallest, rarest region.
    """

    def __init__(self, mode: str = "regions", dice_weight: float = 1.0, ce_weight: float = 1.0,
                 include_background: bool = False, batch_dice: bool = True,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 region_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"loss mode must be one of {MODES}, got {mode!r}")
        self.region_weights = _normalised_weights(region_weights)
        if self.region_weights is not None and mode != "regions":
            raise ValueError("region_weights apply to mode='regions' only")
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
            raise ValueError(f"need non-negative weights, not both 0; got dice={dice_weight}, "
                             f"ce={ce_weight}")
        self.mode, self.dice_weight, self.ce_weight = mode, dice_weight, ce_weight
        self.include_background, self.batch_dice = include_background, batch_dice
        self.smooth_nr, self.smooth_dr = smooth_nr, smooth_dr

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # keep the reductions in fp32 under autocast
        if self.mode == "regions":
            return self._regions(logits, target)
        return self._labels(logits, target)

    def _dice(self, probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return soft_dice_loss(probs, onehot, self.batch_dice, self.smooth_nr, self.smooth_dr)

    def _labels(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels = squeeze_labels(target)
        n_classes = logits.shape[1]
        _check_spatial(logits, labels.shape[1:])
        _check_label_range(labels, n_classes)
        onehot = F.one_hot(labels, n_classes).movedim(-1, 1).float()
        probs = torch.softmax(logits, dim=1)
        if not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        dice = self._dice(probs, onehot)
        return self.dice_weight * dice + self.ce_weight * F.cross_entropy(logits, labels)

    def _regions(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != 3:
            raise ValueError(
                f"regions mode needs 3 output channels (WT, TC, ET), got {logits.shape[1]}")
        regions = target.float() if target.is_floating_point() else label_regions(target)
        _check_spatial(logits, regions.shape[2:])
        w = self.region_weights
        dice = soft_dice_loss(torch.sigmoid(logits), regions, self.batch_dice, self.smooth_nr, self.smooth_dr, w)
        if w is None:
            bce = F.binary_cross_entropy_with_logits(logits, regions)
        else:
            per_voxel = F.binary_cross_entropy_with_logits(logits, regions, reduction="none")
            bce = (per_voxel.mean(dim=[0, *range(2, logits.ndim)]) * w.to(logits.device)).mean()
        return self.dice_weight * dice + self.ce_weight * bce


def label_regions(labels: torch.Tensor) -> torch.Tensor:
    """Canonical labels -> float WT/TC/ET masks (B,3,*S): io.regions.labels_to_regions with the
    range checked only on CPU (see _check_label_range), where it costs no device read."""
    labels = squeeze_labels(labels)
    _check_label_range(labels, NUM_LABELS)
    return labels_to_regions(labels, check=False)


def _check_label_range(labels: torch.Tensor, n_classes: int) -> None:
    """ValueError for labels outside 0..n_classes-1, on CPU tensors only: there it costs one pass
    and no sync, while on a GPU it would stall the step twice per call (per deep-supervision level
    and micro-batch). GPU training data is checked once per case when opened (seg3d.data: labels
    0..3), and CUDA's one_hot/cross-entropy assert on a bad label anyway."""
    if labels.device.type != "cpu" or not labels.numel():
        return
    lo, hi = (int(v) for v in torch.aminmax(labels))
    if lo < 0 or hi >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1} for {n_classes} output channels, found [{lo}, {hi}]")


def _check_spatial(logits: torch.Tensor, target_spatial: Sequence[int]) -> None:
    if tuple(logits.shape[2:]) != tuple(target_spatial):
        raise ValueError(f"logits spatial shape {tuple(logits.shape[2:])} does not match the "
                         f"target's {tuple(target_spatial)}")


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of `base` over [full_res, half_res, ...] logits; a plain tensor passes through.

    Targets for the coarser outputs are downsampled from the full-resolution labels: nearest for
    label maps, max-pooling for region masks (a region touching a coarse voxel keeps it, and
    max-pooling keeps ET ⊂ TC ⊂ WT). Default weights halve per level: 1, 1/2, 1/4, ...;
    weights are always normalised to sum to 1 so the loss scale does not depend on depth.
    """

    def __init__(self, base: DiceCELoss, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.base = base
        self.weights = None if weights is None else [float(w) for w in weights]
        if self.weights is not None and (min(self.weights) < 0 or sum(self.weights) <= 0):
            raise ValueError(
                f"deep_supervision_weights must be >= 0 with a positive sum, got {weights}")

    def forward(self, logits: torch.Tensor | Sequence[torch.Tensor],
                labels: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, torch.Tensor):
            return self.base(logits, labels)
        weights = self._level_weights(len(logits))
        if self.base.mode == "labels":
            target = squeeze_labels(labels)
        else:
            target = labels.float() if labels.is_floating_point() else label_regions(labels)
        total = logits[0].new_zeros((), dtype=torch.float32)
        for w, out in zip(weights, logits):
            if w > 0:
                total = total + w * self.base(out, _downsample_target(target, out.shape[2:]))
        return total

    def _level_weights(self, n: int) -> list[float]:
        weights = self.weights if self.weights is not None else [0.5 ** i for i in range(n)]
        if len(weights) != n:
            raise ValueError(f"got {n} deep-supervision outputs but {len(weights)} weights")
        s = sum(weights)
        return [w / s for w in weights]


def _downsample_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Labels (B,*S) long -> nearest; regions (B,3,*S) float -> adaptive max-pool to `size`."""
    size = tuple(size)
    if target.is_floating_point():
        if tuple(target.shape[2:]) == size:
            return target
        pool = F.adaptive_max_pool3d if target.ndim == 5 else F.adaptive_max_pool2d
        return pool(target, size)
    if tuple(target.shape[1:]) == size:
        return target
    down = F.interpolate(target[:, None].float(), size=size, mode="nearest")
    return down[:, 0].long()


def build_loss(mode: str = "regions", dice_weight: float = 1.0, ce_weight: float = 1.0,
               deep_supervision_weights: Sequence[float] | None = None,
               **kw: object) -> DeepSupervisionLoss:
    """Loss for training: forward(logits or [logits per level], canonical labels) -> scalar.

    Extra keywords (include_background, batch_dice, smooth_nr, smooth_dr, region_weights) go to DiceCELoss.
    """
    base = DiceCELoss(mode, dice_weight, ce_weight, **kw)  # type: ignore[arg-type]
    return DeepSupervisionLoss(base, deep_supervision_weights)
