"""Dice per BraTS region (WT, TC, ET) from canonical label maps on disk (NumPy).

Labels are canonical (0 bg, 1 NCR, 2 ED, 3 ET); the regions are io/labels.py REGIONS.
Dice convention for an empty region (BraTS challenge practice): if both the reference and the
prediction are empty the Dice is 1 (nothing to find, nothing found); if only one is empty it is 0.
The tensor version for validation, io/regions.py dice_per_region_torch, gives the same numbers,
so validation on the GPU and evaluation on disk agree.
"""
from __future__ import annotations

import numpy as np

from brats_seg.io.labels import REGION_NAMES, region_masks


def dice_binary(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def dice_per_region(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """{'WT': d, 'TC': d, 'ET': d} for two canonical label maps of the same shape."""
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match reference shape {ref.shape}")
    p, r = region_masks(pred), region_masks(ref)
    return {name: dice_binary(p[name], r[name]) for name in REGION_NAMES}


def mean_dice(scores: dict[str, float]) -> float:
    """Mean over the three regions (the BraTS summary figure)."""
    return float(np.mean([scores[name] for name in REGION_NAMES]))
