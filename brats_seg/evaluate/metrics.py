"""Evaluation metrics per BraTS region: Dice, HD95 (mm), sensitivity, specificity, volumes (mL).

Conventions for empty regions, as the BraTS challenge scores them:
- truth and prediction both empty: Dice 1, HD95 0 mm (nothing to find, nothing found);
- exactly one of them empty: Dice 0, HD95 373.13 mm (BraTS's penalty: the diagonal of the
  240 x 240 x 155 mm BraTS volume, sqrt(240² + 240² + 155²));
- sensitivity TP / (TP + FN) is 1 when the truth is empty (no tumour voxel was missed; false
  positives show up in Dice, HD95 and specificity); specificity TN / (TN + FP) is over the whole
  volume.
HD95 is MONAI's `compute_hausdorff_distance(percentile=95)` (the larger of the two directed 95th
percentile surface distances) with the truth file's voxel spacing, computed on the union bounding
box of both masks plus a 1-voxel margin (the same distances, a fraction of the work).
"""
from __future__ import annotations

import warnings

import numpy as np

from brats_seg.evaluate.dice import dice_binary
from brats_seg.io.geometry import voxel_ml

HD95_EMPTY_MM = 373.13
METRICS = ("dice", "hd95_mm", "sensitivity", "specificity", "volume_pred_ml", "volume_truth_ml")


def hd95_mm(pred: np.ndarray, ref: np.ndarray, spacing) -> float:
    """95th-percentile symmetric Hausdorff distance in mm between two boolean masks (BraTS empties)."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 0.0
    if has_pred != has_ref:
        return HD95_EMPTY_MM
    import torch
    from monai.metrics import compute_hausdorff_distance

    box = union_box(pred | ref, margin=1)
    p = torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None]
    r = torch.from_numpy(np.ascontiguousarray(ref[box]))[None, None]
    with warnings.catch_warnings():  # MONAI warns about its own deprecated internal argument
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_hausdorff_distance(p, r, include_background=True, percentile=95,
                                           spacing=[float(s) for s in spacing])
    return float(value.item())


def union_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of a non-empty mask, grown by `margin` voxels and clipped to the volume."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def binary_metrics(pred: np.ndarray, ref: np.ndarray, spacing) -> dict[str, float]:
    """Every metric of METRICS for one pair of boolean masks on a grid of `spacing` mm."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    tp = int(np.count_nonzero(pred & ref))
    n_pred, n_ref = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    fp, fn = n_pred - tp, n_ref - tp
    tn = pred.size - tp - fp - fn
    unit = voxel_ml(spacing)
    return {
        "dice": dice_binary(pred, ref),
        "hd95_mm": hd95_mm(pred, ref, spacing),
        "sensitivity": tp / n_ref if n_ref else 1.0,
        "specificity": tn / (tn + fp) if tn + fp else 1.0,
        "volume_pred_ml": n_pred * unit,
        "volume_truth_ml": n_ref * unit,
    }


def summarise(values: list[float]) -> dict[str, float | int | None]:
    """mean / median / std (population) / min / max / n of the finite values."""
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "median": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(arr.mean()), "median": float(np.median(arr)), "std": float(arr.std()),
            "min": float(arr.min()), "max": float(arr.max()), "n": int(arr.size)}
