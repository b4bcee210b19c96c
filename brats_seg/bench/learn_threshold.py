"""The ET post-processing threshold chosen by cross-validation, as nnU-Net chooses it.

`brats-seg predict --et-min-mm3 T` turns all enhancing tumour of a case into necrosis when the
predicted ET volume is below T mm³ (brats_seg/infer/postprocess.py). A good T depends on the model
and the data, so `bench learn` predicts every held-out case once WITHOUT the rule, then applies
the very same `postprocess` function to the saved masks for every T of a grid (no re-prediction)
and keeps the T with the highest mean ET Dice over all held-out cases; ties go to the smallest T
(the least post-processing that does as well). The rule moves ET voxels into NCR, so TC and WT
do not change: their columns in the table show it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from brats_seg.errors import InputError
from brats_seg.evaluate.dice import dice_binary
from brats_seg.evaluate.metrics import hd95_mm
from brats_seg.evaluate.stage import PredictedMask, find_predictions
from brats_seg.infer.postprocess import ET, PostprocessConfig, postprocess
from brats_seg.io.content import read_label_record
from brats_seg.io.geometry import same_grid
from brats_seg.io.labels import region_masks, to_canonical
from brats_seg.io.manifest import case_root, load_manifest
from brats_seg.io.volume import read_volume_verified

ET_GRID_MM3 = (0.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 1500.0, 2000.0, 3000.0)
TIE_TOLERANCE = 1e-12  # mean Dice closer than this counts as a tie


def case_scores(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float],
                grid: Sequence[float] = ET_GRID_MM3) -> list[dict]:
    """ET and TC Dice and ET HD95 of one case for each threshold of `grid` (canonical label maps).

    Each threshold's mask comes from `postprocess` exactly as predict would make it; a mask is
    scored once per distinct outcome (the rule either keeps all ET or removes all of it)."""
    voxel_mm3 = float(np.prod(spacing))
    ref = region_masks(truth)
    scored: dict[int, dict] = {}
    rows = []
    for threshold in grid:
        labels = postprocess(pred, voxel_mm3, PostprocessConfig(et_min_mm3=float(threshold)))
        et = labels == ET
        key = int(np.count_nonzero(et))
        if key not in scored:
            tc = region_masks(labels)["TC"]
            scored[key] = {"et_dice": dice_binary(et, ref["ET"]), "tc_dice": dice_binary(tc, ref["TC"]),
                           "et_hd95_mm": hd95_mm(et, ref["ET"], spacing), "et_ml": key * voxel_mm3 / 1000.0}
        rows.append({"et_min_mm3": float(threshold), **scored[key]})
    return rows


def grid_columns(per_case: dict[str, list[dict]], what: str) -> Iterator[tuple[dict, list[dict]]]:
    """(first case's row, every case's row) for each entry of a post-processing grid, in grid
    order: what the tables of the ET threshold and the component rule average over."""
    if not per_case:
        raise ValueError(f"no case to choose {what} from")
    cases = list(per_case.values())
    for i, first in enumerate(cases[0]):
        yield first, [case[i] for case in cases]


def threshold_table(per_case: dict[str, list[dict]]) -> list[dict]:
    """Mean ET Dice, TC Dice and ET HD95 over the cases, one row per threshold (grid order)."""
    table = []
    for first, column in grid_columns(per_case, "an ET threshold"):
        table.append({"et_min_mm3": first["et_min_mm3"], "n_cases": len(column),
                      **{f"mean_{k}": float(np.mean([c[k] for c in column]))
                         for k in ("et_dice", "tc_dice", "et_hd95_mm")},
                      "cases_without_et": sum(c["et_ml"] == 0 for c in column)})
    return table


def choose_threshold(table: list[dict]) -> float:
    """The threshold with the highest mean ET Dice; among (near-)ties the smallest."""
    best = max(row["mean_et_dice"] for row in table)
    return min(row["et_min_mm3"] for row in table if row["mean_et_dice"] >= best - TIE_TOLERANCE)


def load_pair(case: dict, root: Path, mask: PredictedMask) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """(predicted, true) canonical label maps of one case on the truth's grid, and its spacing."""
    _, truth_raw, geom = read_label_record(root, case["seg"], case["label_convention"], case["id"],
                                           spacing_range=None, links=case.get("links"))
    if not mask.sha256:
        raise InputError(mask.path, "has no recorded sha256; expected a mask listed in `brats-seg predict`'s "
                                    "predictions.json")
    pred_raw, pred_geom = read_volume_verified(mask.path, mask.sha256)
    if (problem := same_grid(geom, pred_geom)) is not None:
        raise InputError(mask.path, f"{problem} of the truth; expected the prediction on the truth's grid")
    convention = mask.convention or case["label_convention"]
    return to_canonical(pred_raw, convention), to_canonical(truth_raw, case["label_convention"]), \
        tuple(float(s) for s in geom.spacing)


def fold_pairs(pred_dir: Path, truth: Path, data_roots: Sequence[Path]
               ) -> Iterator[tuple[str, np.ndarray, np.ndarray, tuple[float, ...]]]:
    """(case id, predicted, true, spacing) for every labelled case of the raw manifest `truth`,
    each read once, for the post-processing studies that score the saved masks."""
    preds = find_predictions(pred_dir)
    raw = load_manifest(truth, stage="raw")
    for case in sorted(raw["cases"], key=lambda c: c["id"]):
        if not case.get("seg"):
            continue
        if case["id"] not in preds:
            raise InputError(pred_dir, f"holds no prediction of held-out case {case['id']}; rerun bench learn")
        yield (case["id"], *load_pair(case, case_root(truth, raw, case, data_roots), preds[case["id"]]))


def study(per_case: dict[str, list[dict]]) -> dict:
    """The table, the chosen threshold and what it gains over no threshold (mean ET Dice)."""
    table = threshold_table(per_case)
    chosen = choose_threshold(table)
    at = {row["et_min_mm3"]: row["mean_et_dice"] for row in table}
    base = at.get(0.0)
    return {"table": table, "chosen_et_min_mm3": chosen, "chosen_mean_et_dice": at[chosen],
            "gain_over_0": None if base is None else at[chosen] - base,
            "per_case": per_case}  # every row kept: `bench merge` recomputes the table from them


def parse_grid(text: str) -> tuple[float, ...]:
    """--et-grid '0,100,250': distinct finite volumes in mm³ >= 0, returned sorted."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not np.isfinite(v) or v < 0 for v in values) or len(set(values)) != len(values):
        raise InputError("--et-grid", f"{text!r} is not valid; expected distinct volumes in mm^3 >= 0 separated by "
                                      "commas, e.g. 0,250,500,1000")
    return tuple(sorted(values))
