"""The ET threshold of `bench learn`, chosen on hand-made masks: mm³ (not voxels), the same masks
predict's post-processing makes, the best mean ET Dice with ties to the smallest threshold."""
from __future__ import annotations

import numpy as np
import pytest

from brats_seg.bench.learn_threshold import case_scores, choose_threshold, parse_grid, study, threshold_table
from brats_seg.errors import InputError
from brats_seg.evaluate.dice import dice_binary
from brats_seg.infer.postprocess import PostprocessConfig, postprocess

SHAPE = (20, 20, 20)
SPACING = (2.0, 2.0, 2.0)  # 8 mm³ per voxel
GRID = (0.0, 50.0, 100.0, 250.0, 2000.0)


def _cube(lo: int, hi: int, value: int, labels: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros(SHAPE, np.uint8) if labels is None else labels.copy()
    out[lo:hi, lo:hi, lo:hi] = value
    return out


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A: no true ET, 8 false ET voxels (64 mm³); B: true ET 125 voxels (1000 mm³), predicted 64 (512 mm³)."""
    truth_a = _cube(4, 12, 2)                            # edema only
    pred_a = _cube(6, 8, 3, _cube(4, 12, 2))             # 2^3 = 8 ET voxels inside it
    truth_b = _cube(5, 10, 3, _cube(3, 12, 1))           # 5^3 = 125 ET voxels in a necrotic core
    pred_b = _cube(6, 10, 3, _cube(3, 12, 1))            # 4^3 = 64 ET voxels, all inside the true ET
    return {"A": (pred_a, truth_a), "B": (pred_b, truth_b)}


def test_scores_follow_predicts_postprocessing_in_mm3():
    pred, truth = _cases()["A"]
    rows = {r["et_min_mm3"]: r for r in case_scores(pred, truth, SPACING, GRID)}
    assert rows[0.0]["et_dice"] == 0.0 and rows[50.0]["et_dice"] == 0.0  # 64 mm³ >= 50: the false ET stays
    assert rows[100.0]["et_dice"] == 1.0 and rows[2000.0]["et_dice"] == 1.0  # removed: both empty
    assert rows[100.0]["et_ml"] == 0.0 and rows[50.0]["et_ml"] == pytest.approx(0.064)
    for threshold, row in rows.items():  # the same mask predict --et-min-mm3 would write
        made = postprocess(pred, 8.0, PostprocessConfig(et_min_mm3=threshold))
        assert row["et_dice"] == dice_binary(made == 3, truth == 3)
    assert rows[0.0]["et_hd95_mm"] == pytest.approx(373.13) and rows[100.0]["et_hd95_mm"] == 0.0


def test_tc_is_unchanged_by_the_et_rule():
    pred, truth = _cases()["B"]
    rows = case_scores(pred, truth, SPACING, GRID)
    assert len({r["tc_dice"] for r in rows}) == 1 and rows[0]["tc_dice"] > 0.9
    assert rows[0]["et_dice"] == pytest.approx(2 * 64 / (64 + 125)) and rows[-1]["et_dice"] == 0.0


def test_choice_maximises_mean_et_dice_and_breaks_ties_to_the_smallest():
    per_case = {cid: case_scores(p, t, SPACING, GRID) for cid, (p, t) in _cases().items()}
    table = threshold_table(per_case)
    means = {r["et_min_mm3"]: r["mean_et_dice"] for r in table}
    dice_b = 2 * 64 / (64 + 125)
    assert means[0.0] == pytest.approx(dice_b / 2)
    assert means[100.0] == pytest.approx((1 + dice_b) / 2) and means[250.0] == means[100.0]  # a tie
    assert means[2000.0] == pytest.approx(0.5)  # B's ET (512 mm³) removed too
    assert choose_threshold(table) == 100.0
    result = study(per_case)
    assert result["chosen_et_min_mm3"] == 100.0
    assert result["gain_over_0"] == pytest.approx(0.5)
    assert [r["cases_without_et"] for r in table] == [0, 0, 1, 1, 2]


def test_choose_threshold_on_a_flat_table_is_the_smallest():
    table = [{"et_min_mm3": t, "mean_et_dice": 0.7} for t in (0.0, 100.0, 500.0)]
    assert choose_threshold(table) == 0.0
    table[2]["mean_et_dice"] = 0.7 + 1e-6
    assert choose_threshold(table) == 500.0


@pytest.mark.parametrize("text", ["", "a,b", "0,-1", "0,0", "nan", "1,inf"])
def test_bad_grids_are_one_line_errors(text):
    with pytest.raises(InputError, match="--et-grid"):
        parse_grid(text)


def test_grid_is_sorted():
    assert parse_grid("500, 0,100") == (0.0, 100.0, 500.0)
