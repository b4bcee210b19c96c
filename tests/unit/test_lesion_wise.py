"""BraTS 2023 lesion-wise Dice and HD95 against hand-computed cases (the reference's rules, one at a time)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from brats_seg.errors import InputError
from brats_seg.evaluate.lesions import LESION_HD95_PENALTY_MM, LesionWiseConfig, lesion_config, lesion_wise
from brats_seg.evaluate.metrics import hd95_mm

torch.set_num_threads(1)
SHAPE, ONE_MM = (48, 40, 36), (1.0, 1.0, 1.0)
PENALTY = LESION_HD95_PENALTY_MM


def box(lo, size, shape=SHAPE) -> np.ndarray:
    """A boolean block of `size` (an int: a cube) at corner `lo`."""
    size = (size,) * 3 if isinstance(size, int) else size
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, a + s) for a, s in zip(lo, size))] = True
    return mask


def score(pred, ref, spacing=ONE_MM, **cfg):
    return lesion_wise(pred, ref, spacing, LesionWiseConfig(**cfg))


def test_penalty_is_the_reference_value():
    assert PENALTY == 374.0


def test_two_lesions_one_found_exactly():
    a, b = box((4, 4, 4), 5), box((30, 25, 20), 5)  # 125 voxels each, far apart
    s = score(a, a | b)
    assert s["lesion_dice"] == pytest.approx((1 + 0) / 2)
    assert s["lesion_hd95_mm"] == pytest.approx((0 + PENALTY) / 2)
    assert (s["lesions_tp"], s["lesions_fn"], s["lesions_fp"]) == (1, 1, 0)


def test_a_false_positive_blob_far_away():
    a = box((4, 4, 4), 5)
    s = score(a | box((35, 30, 25), 3), a)  # even a 27-voxel false positive counts: predictions are never thresholded
    assert s["lesion_dice"] == pytest.approx(0.5) and s["lesion_hd95_mm"] == pytest.approx(PENALTY / 2)
    assert (s["lesions_tp"], s["lesions_fn"], s["lesions_fp"]) == (1, 0, 1)
    two_fp = score(a | box((35, 30, 25), 3) | box((35, 4, 25), 2), a)
    assert two_fp["lesion_dice"] == pytest.approx(1 / 3) and two_fp["lesion_hd95_mm"] == pytest.approx(2 * PENALTY / 3)


def test_small_lesions_are_ignored_and_their_matches_are_no_false_positives():
    big, small = box((4, 4, 4), 5), box((30, 25, 20), (2, 4, 5))  # 125 and 40 voxels
    missed = score(big, big | small)
    assert missed["lesion_dice"] == 1.0 and missed["lesion_hd95_mm"] == 0.0 and missed["lesions_fn"] == 0
    found = score(big | small, big | small)
    assert found["lesion_dice"] == 1.0 and found["lesions_fp"] == 0 and found["lesions_tp"] == 1
    only_small = score(np.zeros(SHAPE, bool), small)  # nothing left to score: the reference's NaN -> 1 / 0
    assert only_small["lesion_dice"] == 1.0 and only_small["lesion_hd95_mm"] == 0.0
    # the threshold is a volume: 40 voxels of 2 mm3 are 80 mm3 > 50, so the missed lesion counts
    thick = score(big, big | small, spacing=(1.0, 1.0, 2.0))
    assert thick["lesion_dice"] == pytest.approx(0.5) and thick["lesions_fn"] == 1
    exactly_50 = score(big, big | box((30, 25, 20), (2, 5, 5)))  # <= 50 is ignored, 51 is not
    assert exactly_50["lesion_dice"] == 1.0
    assert score(big, big | box((30, 20, 20), (3, 17, 1)))["lesion_dice"] == pytest.approx(0.5)


def test_a_component_touching_the_dilated_lesion_matches_it():
    gt = box((10, 10, 10), 5)  # x 10..14; a 3-voxel dilation reaches x = 17
    near = score(box((17, 10, 10), 5), gt)  # no voxel in common, but inside the dilation
    assert (near["lesions_tp"], near["lesions_fp"]) == (1, 0)
    assert near["lesion_dice"] == 0.0
    assert near["lesion_hd95_mm"] == pytest.approx(hd95_mm(box((17, 10, 10), 5), gt, ONE_MM))
    assert 0 < near["lesion_hd95_mm"] < PENALTY
    far = score(box((18, 10, 10), 5), gt)  # one voxel further: a false positive and a missed lesion
    assert (far["lesions_tp"], far["lesions_fn"], far["lesions_fp"]) == (0, 1, 1)
    assert far["lesion_hd95_mm"] == pytest.approx(PENALTY)
    men = score(box((17, 10, 10), 5), gt, dilation=1)  # BraTS-MEN / MET dilate by 1
    assert men["lesions_fp"] == 1


def test_matched_components_count_whole_even_outside_the_dilation():
    gt = box((10, 10, 10), 5)
    pred = box((11, 10, 10), 5) | box((16, 10, 10), (15, 1, 1))  # shifted cube plus a 15-voxel tail
    s = score(pred, gt)
    assert s["lesion_dice"] == pytest.approx(2 * 100 / (125 + 125 + 15)) and s["lesions_fp"] == 0


def test_the_dilation_is_the_18_connected_cross_three_times():
    gt = box((10, 10, 10), 5)  # far corner at (14, 14, 14)
    point = np.zeros(SHAPE, bool)
    point[16, 16, 16] = True  # offset (2, 2, 2): reached by 3 steps of the 18-connected cross
    assert score(gt | point, gt)["lesions_fp"] == 0
    point[16, 16, 16], point[17, 17, 17] = False, True  # (3, 3, 3): only a 26-connected dilation would reach it
    s = score(gt | point, gt)
    assert s["lesions_fp"] == 1 and s["lesion_dice"] == pytest.approx(0.5)


def test_truth_closer_than_twice_the_dilation_is_one_lesion():
    a = box((4, 10, 10), 5)  # x 4..8
    merged = score(a, a | box((15, 10, 10), 5))  # gap of 6 voxels (9..14): the two dilations meet
    assert merged["lesion_dice"] == pytest.approx(2 * 125 / (250 + 125)) and merged["lesions_tp"] == 1
    apart = score(a, a | box((16, 10, 10), 5))  # gap of 7: two lesions
    assert apart["lesion_dice"] == pytest.approx(0.5) and (apart["lesions_tp"], apart["lesions_fn"]) == (1, 1)
    undilated = score(a, a | box((15, 10, 10), 5), dilation=0)
    assert undilated["lesion_dice"] == pytest.approx(0.5)


def test_components_are_26_connected():
    a, b = box((10, 10, 10), 5), box((15, 15, 15), 5)  # meet only at one corner: (14,14,14)-(15,15,15)
    gt_joined = score(a, a | b, dilation=0)  # one GT lesion (6-connectivity would make it two: 0.5)
    assert gt_joined["lesion_dice"] == pytest.approx(2 * 125 / 375) and gt_joined["lesions_fn"] == 0
    pred_joined = score(a | b, a, dilation=0)  # one predicted component, matched (6-connectivity: a FP, 0.5)
    assert pred_joined["lesion_dice"] == pytest.approx(2 * 125 / 375) and pred_joined["lesions_fp"] == 0


def test_empty_sides():
    empty, some = np.zeros(SHAPE, bool), box((10, 10, 10), 5)
    both = score(empty, empty)
    assert both == {"lesion_dice": 1.0, "lesion_hd95_mm": 0.0, "lesions_tp": 0, "lesions_fn": 0, "lesions_fp": 0}
    invented = score(some | box((30, 30, 30), 4), empty)
    assert invented["lesion_dice"] == 0.0 and invented["lesion_hd95_mm"] == PENALTY and invented["lesions_fp"] == 2
    missed = score(empty, some)
    assert missed["lesion_dice"] == 0.0 and missed["lesion_hd95_mm"] == PENALTY and missed["lesions_fn"] == 1


def test_hd95_uses_the_spacing():
    gt = box((10, 10, 10), 5)
    pred = box((11, 10, 10), 5)  # shifted one voxel along x
    assert score(pred, gt)["lesion_hd95_mm"] == pytest.approx(1.0)
    assert score(pred, gt, spacing=(2.0, 1.0, 1.0))["lesion_hd95_mm"] == pytest.approx(2.0)


def test_lesions_at_the_volume_border():
    gt = box((0, 0, 0), 5) | box((43, 35, 31), 5)  # two corners of the volume
    s = score(box((0, 0, 0), 5), gt)
    assert s["lesion_dice"] == pytest.approx(0.5) and s["lesions_fn"] == 1


def test_config_presets_and_ranges():
    assert lesion_config() == LesionWiseConfig(dilation=3, min_volume_mm3=50.0)
    assert lesion_config("met") == LesionWiseConfig(dilation=1, min_volume_mm3=2.0)
    assert lesion_config("men", min_volume_mm3=10) == LesionWiseConfig(dilation=1, min_volume_mm3=10.0)
    with pytest.raises(InputError, match="--lesion-challenge"):
        lesion_config("lung")
    for bad in (-1, 21):
        with pytest.raises(InputError, match="--lesion-dilation"):
            lesion_config(dilation=bad)
    with pytest.raises(InputError, match="--lesion-min-mm3"):
        lesion_config(min_volume_mm3=float("nan"))
    with pytest.raises(ValueError, match="shape"):
        lesion_wise(np.zeros((4, 4, 4), bool), np.zeros((4, 4, 5), bool), ONE_MM)


def reference_loop(pred, ref, spacing, dilation=3, threshold=50.0) -> tuple[float, float]:
    """The organisers' get_LesionWiseScores / get_LesionWiseResults, step by step (slow; scipy for cc3d)."""
    from scipy import ndimage

    cross, cube = ndimage.generate_binary_structure(3, 2), np.ones((3, 3, 3))
    gt_cc, _ = ndimage.label(ref, cube)
    dil_cc, n_dil = ndimage.label(ndimage.binary_dilation(ref, cross, iterations=dilation), cube)
    combined = np.zeros_like(dil_cc)
    for comp in range(1, n_dil + 1):  # get_GTseg_combinedByDilation
        combined[(dil_cc == comp) & (gt_cc > 0)] = comp
    pred_cc, _ = ndimage.label(pred, cube)
    tp, pairs = [], []
    for comp in range(1, combined.max() + 1):
        gt_tmp = combined == comp
        hits = np.unique(pred_cc[ndimage.binary_dilation(gt_tmp, cross, iterations=dilation)])
        hits = hits[hits != 0]
        tp += list(hits)
        pred_tmp = np.isin(pred_cc, hits) & (pred_cc > 0)
        dice = 2 * (pred_tmp & gt_tmp).sum() / (pred_tmp.sum() + gt_tmp.sum())
        hd = hd95_mm(pred_tmp, gt_tmp, spacing) if hits.size else PENALTY
        pairs.append((gt_tmp.sum() * np.prod(spacing), dice, hd))
    n_fp = np.unique(pred_cc[~np.isin(pred_cc, tp + [0])]).size
    kept = [(d, h) for vol, d, h in pairs if vol > threshold]
    if not kept and not n_fp:
        return 1.0, 0.0
    n = len(kept) + n_fp
    return sum(d for d, _ in kept) / n, (sum(h for _, h in kept) + n_fp * PENALTY) / n


@pytest.mark.parametrize("seed,dilation", [(0, 1), (3, 1), (1, 3), (4, 2)])
def test_matches_the_reference_loop_on_random_blobs(seed, dilation):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape, spacing = (48, 44, 36), (1.0, 1.0, 1.0) if seed % 2 else (1.2, 0.9, 1.5)
    noise = [ndimage.gaussian_filter(rng.normal(size=shape), 2.0) for _ in range(2)]
    ref, pred = noise[0] > 0.085, (noise[0] + 0.8 * noise[1]) > 0.11  # dozens of lesions, partly overlapping
    ours = lesion_wise(pred, ref, spacing, LesionWiseConfig(dilation=dilation, min_volume_mm3=20.0))
    dice, hd = reference_loop(pred, ref, spacing, dilation=dilation, threshold=20.0)
    assert ours["lesions_tp"] >= 1 and ours["lesions_fp"] >= 2  # the case exercises matches and false positives
    assert ours["lesions_fn"] >= 1 or dilation > 1
    assert ours["lesion_dice"] == pytest.approx(dice, abs=1e-9) and ours["lesion_hd95_mm"] == pytest.approx(hd, abs=1e-6)


# --- `brats-seg evaluate --lesion-wise` ----------------------------------------------------------------

@pytest.fixture
def scored(tmp_path, make_case, save_nifti):
    """Two phantom cases ingested; predictions: case0 exact, case1 with a far-away false-positive edema blob."""
    import nibabel as nib

    from brats_seg.ingest.stage import ingest

    for i in range(2):
        make_case(tmp_path / "src", f"case{i}", seed=i)
    ingest([tmp_path / "src"], tmp_path / "raw.json")
    pred = tmp_path / "pred"
    pred.mkdir()
    for i in range(2):
        src = nib.load(str(tmp_path / "src" / f"case{i}" / f"case{i}_seg.nii.gz"))
        data = np.asarray(src.dataobj).copy()
        if i == 1:
            data[0:2, 0:2, 0:2] = 2  # 5+ voxels from the tumour (which starts at 6, 4, 2): beyond a 3-voxel dilation
        save_nifti(pred / f"case{i}.nii.gz", data, src.affine)
    return tmp_path


def test_cli_lesion_wise_columns_summary_table_and_report(scored, run_cli):
    import csv
    import json

    out = scored / "eval"
    code, stdout, err = run_cli("evaluate", "--pred", scored / "pred", "--truth", scored / "raw.json",
                                "--out", out, "--lesion-wise")
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    wt1 = next(r for r in rows if r["case"] == "case1" and r["region"] == "WT")
    assert float(wt1["lesion_dice"]) == pytest.approx(0.5) and float(wt1["lesion_hd95_mm"]) == pytest.approx(187.0)
    assert (wt1["lesions_tp"], wt1["lesions_fn"], wt1["lesions_fp"]) == ("1", "0", "1")
    assert float(wt1["dice"]) > 0.99  # voxel-wise, 8 extra voxels hardly count; lesion-wise they halve the score
    tc1 = next(r for r in rows if r["case"] == "case1" and r["region"] == "TC")
    assert float(tc1["lesion_dice"]) == 1.0  # edema is no tumour core
    summary = json.loads((out / "summary.json").read_text())
    assert summary["regions"]["WT"]["lesion_dice"]["mean"] == pytest.approx(0.75)
    assert summary["lesion_wise"]["dilation_voxels"] == 3 and summary["lesion_wise"]["min_volume_mm3"] == 50.0
    assert summary["lesion_wise"]["mean_dice"] == pytest.approx((0.75 + 1 + 1) / 3)
    assert "lesion-wise Dice" in stdout and "mean lesion-wise Dice over regions 0.9167" in stdout
    code, _, err = run_cli("report", "--eval", out, "--out", scored / "report")
    assert code == 0, err
    report = (scored / "report" / "report.md").read_text()
    assert "lesion-wise HD95 (mm)" in report and "dilated 3 voxels" in report


def test_cli_without_lesion_wise_keeps_the_voxel_columns(scored, run_cli):
    import csv

    code, stdout, err = run_cli("evaluate", "--pred", scored / "pred", "--truth", scored / "raw.json",
                                "--out", scored / "eval")
    assert code == 0, err
    header = next(csv.reader(open(scored / "eval" / "metrics.csv")))
    assert not any(h.startswith("lesion") for h in header) and "lesion-wise" not in stdout


def test_cli_lesion_options_are_checked(scored, run_cli):
    import json

    base = ("evaluate", "--pred", scored / "pred", "--truth", scored / "raw.json", "--out", scored / "eval")
    for extra, named in ((("--lesion-dilation", "2"), "without --lesion-wise"),
                         (("--lesion-wise", "--lesion-dilation", "99"), "--lesion-dilation"),
                         (("--lesion-wise", "--lesion-min-mm3", "-1"), "--lesion-min-mm3"),
                         (("--lesion-wise", "--lesion-challenge", "lung"), "--lesion-challenge")):
        code, _, err = run_cli(*base, *extra)
        assert code == 2 and named in err and len(err.strip().splitlines()) == 1, err
    assert not (scored / "eval").exists()
    code, _, err = run_cli(*base, "--lesion-wise", "--lesion-challenge", "met")
    assert code == 0, err
    block = json.loads((scored / "eval" / "summary.json").read_text())["lesion_wise"]
    assert (block["dilation_voxels"], block["min_volume_mm3"]) == (1, 2.0)
