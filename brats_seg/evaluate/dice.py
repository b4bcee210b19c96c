"""Segmentation metrics per BraTS region (WT, TC, ET) from canonical label maps.

Labels are canonical (0 bg, 1 NCR, 2 ED, 3 ET); regions are WT = {1,2,3}, TC = {1,3}, ET = {3}.
Dice convention for an empty region (BraTS challenge practice): if both the reference and the
prediction are empty the Dice is 1 (nothing to find, nothing found); if only one is empty it is 0.
NumPy and torch versions give the same numbers, so validation on the GPU and evaluation on disk
agree.
"""
from __future__ import annotations

import numpy as np

REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
REGION_NAMES = tuple(REGIONS)


def region_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean mask per region from a canonical label map."""
    return {name: np.isin(labels, ids) for name, ids in REGIONS.items()}


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
    return {name: dice_binary(p[name], r[name]) for name in REGIONS}


def mean_dice(scores: dict[str, float]) -> float:
    return float(np.mean([scores[name] for name in REGION_NAMES]))


def dice_per_region_torch(pred, ref) -> "torch.Tensor":  # noqa: F821 (torch imported lazily)
    """Torch version: canonical label tensors (same shape) -> tensor [WT, TC, ET] (float64).

    Stays on the tensors' device, so validation does not copy whole volumes to the host.
    """
    import torch

    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} does not match reference shape {tuple(ref.shape)}")
    out = []
    for ids in REGIONS.values():
        lut = torch.zeros(max(4, int(max(pred.max(), ref.max())) + 1), dtype=torch.bool, device=pred.device)
        lut[list(ids)] = True
        p, r = lut[pred.long()], lut[ref.long()]
        total = p.sum(dtype=torch.float64) + r.sum(dtype=torch.float64)
        inter = (p & r).sum(dtype=torch.float64)
        out.append(torch.where(total > 0, 2.0 * inter / total.clamp_min(1), torch.ones_like(total)))
    return torch.stack(out)
