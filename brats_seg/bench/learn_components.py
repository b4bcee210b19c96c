"""The tumour-component rule of post-processing chosen by cross-validation.

A model trained for minutes marks blobs of false tumour away from the real one; on a small
tumour they can outweigh it (the weak cases of pipelines/studies/cpu_recipe_cv.md). Removing
components is `brats-seg predict --min-component-mm3 V` (below V mm³) or
`--min-component-fraction F` (below F x the largest component; 1 keeps the largest only).
Either can also delete a real satellite lesion, so, as with the ET threshold
(bench/learn_threshold.py), `bench learn` applies the very same `postprocess` function to every
held-out case's saved mask for each rule of a fixed grid and keeps the rule with the highest
mean Dice over WT, TC and ET; among ties the first of the grid (no post-processing first, then
absolute thresholds, then fractions). The ET rule is chosen separately, on the masks without this
one. The chosen rule's mean is optimistic, picked on the cases it is scored on; nested_estimate
says what the choice is worth on cases it did not see.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from brats_seg.bench.learn_threshold import grid_columns
from brats_seg.evaluate.dice import dice_binary
from brats_seg.infer.postprocess import PostprocessConfig, postprocess
from brats_seg.io.labels import REGION_NAMES, region_masks

# (min_component_mm3, min_component_fraction), no post-processing first
COMPONENT_GRID: tuple[tuple[float, float], ...] = (
    (0.0, 0.0), (250.0, 0.0), (1000.0, 0.0), (3000.0, 0.0), (10000.0, 0.0),
    (0.0, 0.05), (0.0, 0.1), (0.0, 0.25), (0.0, 0.5), (0.0, 1.0))
TIE_TOLERANCE = 1e-12


def rule_name(rule: tuple[float, float]) -> str:
    """The predict flags of one rule, as the tables print it."""
    mm3, fraction = rule
    if mm3 == 0 and fraction == 0:
        return "none"
    if fraction == 0:
        return f"--min-component-mm3 {mm3:g}"
    return f"--min-component-fraction {fraction:g}" if mm3 == 0 else \
        f"--min-component-mm3 {mm3:g} --min-component-fraction {fraction:g}"


def component_scores(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float],
                     grid: Sequence[tuple[float, float]] = COMPONENT_GRID) -> list[dict]:
    """WT, TC and ET Dice of one case (canonical label maps) for each rule of `grid`."""
    voxel_mm3 = float(np.prod(spacing))
    ref = region_masks(truth)
    rows = []
    for mm3, fraction in grid:
        labels = postprocess(pred, voxel_mm3, PostprocessConfig(min_component_mm3=mm3, min_component_fraction=fraction))
        got = region_masks(labels)
        rows.append({"min_component_mm3": mm3, "min_component_fraction": fraction,
                     **{f"{r}_dice": dice_binary(got[r], ref[r]) for r in REGION_NAMES},
                     "wt_ml": float(np.count_nonzero(got["WT"])) * voxel_mm3 / 1000.0})
    return rows


def component_table(per_case: dict[str, list[dict]]) -> list[dict]:
    """Per rule: mean Dice per region and over the three regions (grid order)."""
    table = []
    for first, column in grid_columns(per_case, "a component rule"):
        means = {f"mean_{r}_dice": float(np.mean([c[f"{r}_dice"] for c in column])) for r in REGION_NAMES}
        table.append({"min_component_mm3": first["min_component_mm3"],
                      "min_component_fraction": first["min_component_fraction"], "n_cases": len(column),
                      **means, "mean_dice": float(np.mean(list(means.values())))})
    return table


def _best_row(table: list[dict]) -> int:
    """Index of the first rule with the highest mean Dice over the three regions."""
    best = max(row["mean_dice"] for row in table)
    return next(i for i, row in enumerate(table) if row["mean_dice"] >= best - TIE_TOLERANCE)


def nested_estimate(per_case: dict[str, list[dict]], folds: dict[str, int]) -> dict:
    """What choosing the rule is worth on unseen cases: each fold's cases scored with the rule
    chosen on the other folds' cases. The chosen rule's own mean is optimistic, since it was
    picked on the very cases it is scored on; this one is not."""
    scored: dict[str, dict] = {}
    rules = []
    for fold in sorted(set(folds.values())):
        others = {cid: rows for cid, rows in per_case.items() if folds[cid] != fold}
        i = _best_row(component_table(others)) if others else 0
        rules.append(_rule_of(per_case, i))
        scored.update({cid: rows[i] for cid, rows in per_case.items() if folds[cid] == fold})
    means = {f"mean_{r}_dice": float(np.mean([row[f"{r}_dice"] for row in scored.values()])) for r in REGION_NAMES}
    return {**means, "mean_dice": float(np.mean(list(means.values()))), "rule_per_fold": rules}


def _rule_of(per_case: dict[str, list[dict]], i: int) -> str:
    row = next(iter(per_case.values()))[i]
    return rule_name((row["min_component_mm3"], row["min_component_fraction"]))


def component_study(per_case: dict[str, list[dict]], folds: dict[str, int] | None = None) -> dict:
    """The table, the chosen rule (first of the best), its gain over none in mean Dice and, given
    each case's fold, the nested estimate of that gain (nested_estimate)."""
    table = component_table(per_case)
    chosen = table[_best_row(table)]
    rule = (chosen["min_component_mm3"], chosen["min_component_fraction"])
    nested = nested_estimate(per_case, folds) if folds else None
    return {"table": table, "chosen": {"min_component_mm3": rule[0], "min_component_fraction": rule[1],
                                       "predict_args": rule_name(rule)},
            "nested": nested, "nested_gain_over_none": None if nested is None else nested["mean_dice"] - table[0]["mean_dice"],
            "chosen_mean_dice": chosen["mean_dice"], "gain_over_none": chosen["mean_dice"] - table[0]["mean_dice"],
            "per_case": {cid: [{k: r[k] for k in ("min_component_mm3", "min_component_fraction",
                                                  *(f"{g}_dice" for g in REGION_NAMES))} for r in rows]
                         for cid, rows in per_case.items()}}


def component_table_md(study: dict) -> str:
    """Rule -> mean WT / TC / ET Dice and their mean; the choice marked."""
    lines = ["| rule | mean WT Dice | mean TC Dice | mean ET Dice | mean of the three |",
             "| --- | --- | --- | --- | --- |"]
    chosen = (study["chosen"]["min_component_mm3"], study["chosen"]["min_component_fraction"])
    for row in study["table"]:
        rule = (row["min_component_mm3"], row["min_component_fraction"])
        mark = " (chosen)" if rule == chosen else ""
        lines.append(f"| {rule_name(rule)}{mark} | " + " | ".join(f"{row[f'mean_{r}_dice']:.4f}" for r in REGION_NAMES)
                     + f" | {row['mean_dice']:.4f} |")
    return "\n".join(lines)
