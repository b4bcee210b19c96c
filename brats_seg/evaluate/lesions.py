"""BraTS 2023 lesion-wise Dice and HD95 (the challenge's ranking metrics) for one region.

The method of the organisers' reference code (rachitsaluja/BraTS-2023-Metrics, eval.py
get_LesionWiseScores / get_LesionWiseResults), reproduced with scipy.ndimage:
1. truth and prediction are split into 26-connected components;
2. the truth is dilated `dilation` times by the 18-connected 3x3x3 cross (scipy's
   generate_binary_structure(3, 2)); one GT lesion is the truth inside one 26-connected component of
   that dilated mask (truth components closer than the dilation merge into one lesion);
3. a predicted component belongs to every GT lesion whose dilation it touches;
4. each GT lesion scores Dice and HD95 against the union of its whole matched components; a lesion
   with no match scores Dice 0, HD95 374 mm;
5. GT lesions of volume <= min_volume_mm3 (voxels x voxel volume; 50 mm3 = 50 voxels at BraTS's
   1 mm) are left out of the score, and components matched to them are no false positives;
   predicted components are never removed, whatever their size;
6. each predicted component that touches no GT lesion's dilation is a false positive: Dice 0, HD95 374;
7. the case score is the sum over the kept GT lesions and the false positives divided by their
   number; with none of either (both empty, or the truth holds only small lesions and nothing else
   was predicted) the reference's NaN becomes Dice 1 and HD95 0.
Dilated components are exactly the dilations of their lesions (dilation distributes over a union
and keeps each lesion connected), so one labelling of the dilated truth matches every component at
once instead of one full-volume dilation per lesion. HD95 is this project's (MONAI's symmetric 95th
percentile, metrics.hd95_mm); the reference uses DeepMind's surface-distance package, which weighs
surface elements by area, so a lesion's HD95 can differ from it by a fraction of a voxel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from brats_seg.core.typed_config import Range, within
from brats_seg.errors import InputError
from brats_seg.evaluate.metrics import hd95_mm, union_box

LESION_HD95_PENALTY_MM = 374.0  # the reference's value for a missed or invented lesion
LESION_METRICS = ("lesion_dice", "lesion_hd95_mm", "lesions_tp", "lesions_fn", "lesions_fp")
STRUCT_26 = np.ones((3, 3, 3), bool)
STRUCT_18 = ndimage.generate_binary_structure(3, 2)
# (dilation voxels, lesion volume threshold mm3) per BraTS 2023 task, as get_challenge_parameters sets them
CHALLENGES: dict[str, tuple[int, float]] = {"gli": (3, 50.0), "ssa": (3, 50.0), "ped": (3, 50.0),
                                            "men": (1, 50.0), "met": (1, 2.0)}
RANGES: dict[str, Range] = {"--lesion-dilation": within(0, 20), "--lesion-min-mm3": within(0, 1e7)}


@dataclass(frozen=True)
class LesionWiseConfig:
    """The two parameters the challenge sets per task (default: adult glioma, BraTS-GLI 2023)."""

    dilation: int = 3  # voxels of dilation that decide which predicted components belong to a GT lesion
    min_volume_mm3: float = 50.0  # GT lesions of at most this volume are left out of the score


def lesion_config(challenge: str = "gli", dilation: int | None = None,
                  min_volume_mm3: float | None = None) -> LesionWiseConfig:
    """The typed, range-checked config of --lesion-challenge / --lesion-dilation / --lesion-min-mm3."""
    if challenge not in CHALLENGES:
        raise InputError("--lesion-challenge", f"{challenge!r} is not a BraTS 2023 task; expected one of "
                                               f"{', '.join(CHALLENGES)}")
    default_dilation, default_volume = CHALLENGES[challenge]
    dilation = default_dilation if dilation is None else dilation
    volume = default_volume if min_volume_mm3 is None else min_volume_mm3
    for flag, value in (("--lesion-dilation", dilation), ("--lesion-min-mm3", volume)):
        if isinstance(value, bool) or not RANGES[flag].holds(value):
            raise InputError(flag, f"got {value!r}; expected {RANGES[flag].text()}")
    if int(dilation) != dilation:
        raise InputError("--lesion-dilation", f"got {dilation!r}; expected a whole number of voxels")
    return LesionWiseConfig(dilation=int(dilation), min_volume_mm3=float(volume))


def _components(pred: np.ndarray, ref: np.ndarray, dilation: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(GT lesion id of every voxel of the dilated truth, predicted component ids, n lesions, n components)."""
    grown = ndimage.binary_dilation(ref, STRUCT_18, iterations=dilation) if dilation > 0 else ref
    lesion_of, n_gt = ndimage.label(grown, STRUCT_26)  # iterations=0 would mean "until nothing changes"
    component, n_pred = ndimage.label(pred, STRUCT_26)
    return lesion_of, component, int(n_gt), int(n_pred)


def _pair_keys(a: np.ndarray, b: np.ndarray, where: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (a, b) id pairs over `where`, as one int64 key each, with their voxel counts."""
    keys = a[where].astype(np.int64) * base + b[where]
    return np.unique(keys, return_counts=True)


def _lesion_hd95(gt_ids, component, lesion: int, matched: np.ndarray, spacing) -> float:
    """HD95 between one GT lesion and the union of its matched components, on their joint box only."""
    joint = (gt_ids == lesion) | np.isin(component, matched)
    box = union_box(joint, margin=1)
    return hd95_mm(np.isin(component[box], matched), gt_ids[box] == lesion, spacing)


def lesion_wise(pred: np.ndarray, ref: np.ndarray, spacing, cfg: LesionWiseConfig = LesionWiseConfig()) -> dict:
    """Lesion-wise Dice and HD95 (mm) of one region's boolean masks, and the lesion counts (tp, fn, fp)."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match truth shape {ref.shape}")
    if not pred.any() and not ref.any():
        return dict(zip(LESION_METRICS, (1.0, 0.0, 0, 0, 0)))
    box = union_box(pred | ref, margin=cfg.dilation + 1)  # the dilation never reaches past this box
    pred, ref = pred[box], ref[box]
    lesion_of, component, n_gt, n_pred = _components(pred, ref, cfg.dilation)
    gt_ids = np.where(ref, lesion_of, 0)
    gt_size = np.bincount(gt_ids.ravel(), minlength=n_gt + 1)
    pred_size = np.bincount(component.ravel(), minlength=n_pred + 1)
    touch, _ = _pair_keys(lesion_of, component, (lesion_of > 0) & (component > 0), n_pred + 1)
    shared, counts = _pair_keys(gt_ids, component, ref & pred, n_pred + 1)
    inter = np.bincount(shared // (n_pred + 1), weights=counts, minlength=n_gt + 1)
    touch_gt, touch_pred = touch // (n_pred + 1), touch % (n_pred + 1)
    kept = np.flatnonzero(gt_size * float(np.prod(spacing)) > cfg.min_volume_mm3)
    kept = kept[kept > 0]
    dice, hd95, tp = [], [], 0
    for lesion in kept:
        matched = touch_pred[touch_gt == lesion]
        if matched.size == 0:
            dice.append(0.0)
            hd95.append(LESION_HD95_PENALTY_MM)
            continue
        tp += 1
        dice.append(2.0 * inter[lesion] / (gt_size[lesion] + pred_size[matched].sum()))
        hd95.append(_lesion_hd95(gt_ids, component, int(lesion), matched, spacing))
    n_fp = n_pred - np.unique(touch_pred).size
    return _case_score(dice, hd95, tp, n_fp)


def _case_score(dice: list[float], hd95: list[float], tp: int, n_fp: int) -> dict:
    """The reference's mean over kept GT lesions and false positives (1 / 0 when there are none)."""
    n = len(dice) + n_fp
    if n == 0:
        return dict(zip(LESION_METRICS, (1.0, 0.0, 0, 0, 0)))
    return {"lesion_dice": float(sum(dice)) / n,
            "lesion_hd95_mm": float(sum(hd95) + n_fp * LESION_HD95_PENALTY_MM) / n,
            "lesions_tp": tp, "lesions_fn": len(dice) - tp, "lesions_fp": int(n_fp)}
