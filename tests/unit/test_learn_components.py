"""The component rule of `bench learn`, chosen on hand-made masks: the same masks predict's
post-processing makes, the best mean Dice over WT/TC/ET, ties to the least post-processing."""
from __future__ import annotations

import numpy as np
import pytest

from brats_seg.bench.learn_components import (COMPONENT_GRID, component_scores, component_study,
                                              component_table_md, rule_name)
from brats_seg.evaluate.dice import dice_binary
from brats_seg.infer.postprocess import PostprocessConfig, postprocess

SHAPE = (24, 24, 24)
SPACING = (2.0, 2.0, 2.0)  # 8 mm^3 per voxel


def _tumour() -> np.ndarray:
    labels = np.zeros(SHAPE, np.uint8)
    labels[4:14, 4:14, 4:14] = 2     # 1000 voxels of oedema (8000 mm^3)
    labels[7:11, 7:11, 7:11] = 3     # 64 ET voxels
    return labels


def test_a_false_blob_is_removed_by_the_chosen_rule():
    truth = _tumour()
    pred = truth.copy()
    pred[18:23, 18:23, 18:23] = 2    # 125 false voxels (1000 mm^3), 12.5% of the tumour
    rows = component_scores(pred, truth, SPACING)
    assert [(r["min_component_mm3"], r["min_component_fraction"]) for r in rows] == list(COMPONENT_GRID)
    by_rule = {(r["min_component_mm3"], r["min_component_fraction"]): r for r in rows}
    assert by_rule[(0.0, 0.0)]["WT_dice"] == pytest.approx(2000 / 2125)
    assert by_rule[(3000.0, 0.0)]["WT_dice"] == 1.0 and by_rule[(0.0, 0.25)]["WT_dice"] == 1.0
    assert by_rule[(250.0, 0.0)]["WT_dice"] == by_rule[(0.0, 0.0)]["WT_dice"]  # 1000 mm^3 is not below 250
    assert by_rule[(0.0, 0.1)]["WT_dice"] < 1.0  # 12.5% is not below 10%
    for (mm3, fraction), row in by_rule.items():  # the same mask predict would write
        made = postprocess(pred, 8.0, PostprocessConfig(min_component_mm3=mm3, min_component_fraction=fraction))
        assert row["WT_dice"] == dice_binary(made > 0, truth > 0)
    result = component_study({"A": rows})
    assert result["chosen"] == {"min_component_mm3": 3000.0, "min_component_fraction": 0.0,
                                "predict_args": "--min-component-mm3 3000"}
    assert result["gain_over_none"] == pytest.approx((1.0 - 2000 / 2125) / 3)
    assert "--min-component-mm3 3000 (chosen)" in component_table_md(result)


def test_a_real_satellite_keeps_no_post_processing():
    truth = _tumour()
    truth[18:23, 18:23, 18:23] = 2   # a second, real lesion
    pred = truth.copy()
    result = component_study({"A": component_scores(pred, truth, SPACING)})
    assert result["chosen"]["predict_args"] == "none" and result["gain_over_none"] == 0.0
    only_largest = next(r for r in result["table"] if r["min_component_fraction"] == 1.0)
    assert only_largest["mean_WT_dice"] < 1.0


def test_rule_names_are_predict_flags():
    assert rule_name((0.0, 0.0)) == "none"
    assert rule_name((0.0, 0.5)) == "--min-component-fraction 0.5"
    assert rule_name((100.0, 0.5)) == "--min-component-mm3 100 --min-component-fraction 0.5"


def test_nested_estimate_chooses_each_folds_rule_on_the_other_folds():
    truth = _tumour()
    blob = truth.copy()
    blob[18:23, 18:23, 18:23] = 2        # a false blob: removing it helps
    satellite = truth.copy()
    satellite[18:23, 18:23, 18:23] = 2   # a real satellite, predicted: removing it hurts
    per_case = {"A": component_scores(blob, truth, SPACING), "B": component_scores(blob, truth, SPACING),
                "C": component_scores(satellite, satellite, SPACING)}
    folds = {"A": 0, "B": 1, "C": 2}
    result = component_study(per_case, folds)
    nested = result["nested"]
    # fold 2 (C) is scored with the rule that folds 0-1 chose (removal): its satellite is lost
    assert nested["rule_per_fold"][2] == result["chosen"]["predict_args"] != "none"
    assert nested["rule_per_fold"][0] == nested["rule_per_fold"][1] == "none"  # A+C or B+C: removal costs C more than it gains
    c_removed = next(r for r in per_case["C"] if (r["min_component_mm3"], r["min_component_fraction"]) ==
                     (result["chosen"]["min_component_mm3"], result["chosen"]["min_component_fraction"]))
    want_wt = (per_case["A"][0]["WT_dice"] + per_case["B"][0]["WT_dice"] + c_removed["WT_dice"]) / 3
    assert nested["mean_WT_dice"] == pytest.approx(want_wt)
    assert result["nested_gain_over_none"] < result["gain_over_none"]
    assert component_study(per_case)["nested"] is None
