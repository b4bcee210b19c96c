"""The BraTS 2024 post-treatment convention (4 = resection cavity): tables, checks, and evaluation with region RC."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats_seg.errors import InputError
from brats_seg.io.content import check_label_map
from brats_seg.io.labels import (CONVENTIONS, canonical_with_counts, extra_region_mask, extra_region_names,
                                 from_canonical, guess_convention, region_masks, to_canonical)


def test_the_cavity_is_in_no_tumour_region():
    disk = np.array([0, 1, 2, 3, 4], np.uint8)  # bg, NETC, SNFH, ET, RC
    canonical = to_canonical(disk, "brats2024")
    np.testing.assert_array_equal(canonical, [0, 1, 2, 3, 0])
    regions = region_masks(canonical)
    np.testing.assert_array_equal(regions["WT"], [0, 1, 1, 1, 0])  # WT = 1, 2, 3
    np.testing.assert_array_equal(regions["TC"], [0, 1, 0, 1, 0])  # TC = 1, 3
    np.testing.assert_array_equal(regions["ET"], [0, 0, 0, 1, 0])  # ET = 3
    np.testing.assert_array_equal(extra_region_mask(disk, "brats2024", "RC"), [0, 0, 0, 0, 1])
    assert not extra_region_mask(disk, "brats2023", "RC").any()  # a convention without a cavity never has one
    assert to_canonical(np.array([4]), "brats2021")[0] == 3  # the same value is ET in BraTS 2021


def test_region_names_and_conventions():
    assert "brats2024" in CONVENTIONS
    assert extra_region_names("brats2024") == ("RC",) and extra_region_names("brats2023", "brats2024") == ("RC",)
    assert extra_region_names("brats2021", None, "msd") == ()


def test_counts_and_refusals():
    disk = np.array([[0, 4, 4], [1, 2, 3]], np.uint8)
    out, counts = canonical_with_counts(disk, "brats2024")
    assert counts == [3, 1, 1, 1] and out.tolist() == [[0, 0, 0], [1, 2, 3]]  # the cavity counts as background
    with pytest.raises(ValueError):
        to_canonical(np.array([0, 5]), "brats2024")
    for convention in ("brats2021", "brats2023"):  # unchanged: the fast path still refuses foreign values
        with pytest.raises(ValueError):
            to_canonical(np.array([3, 4]), convention)


def test_writing_2024_labels_never_writes_a_cavity():
    canonical = np.array([0, 1, 2, 3], np.uint8)
    np.testing.assert_array_equal(from_canonical(canonical, "brats2024"), [0, 1, 2, 3])


def test_label_maps_are_checked_against_2024():
    check_label_map(Path("seg.nii.gz"), np.array([0, 1, 2, 3, 4], np.uint8), "brats2024")
    with pytest.raises(InputError, match=r"\[5\] are outside the brats2024 convention"):
        check_label_map(Path("seg.nii.gz"), np.array([0, 3, 4, 5], np.uint8), "brats2024")
    for convention in ("brats2021", "brats2023"):
        with pytest.raises(InputError, match="mix conventions.*--labels brats2024"):
            check_label_map(Path("seg.nii.gz"), np.array([0, 3, 4], np.uint8), convention)


def test_2024_is_never_guessed():
    """Its values overlap 2021's (4) and 2023's (3): only a declaration selects it."""
    for values in ({0, 1, 2, 4}, {0, 1, 2, 3}, {0, 1, 2, 3, 4}):
        assert guess_convention(values, "brats2023") != "brats2024"


# --- evaluation with a 2024 truth --------------------------------------------------------------------

SHAPE = (24, 20, 16)


def post_treatment_labels(with_et: bool = True) -> np.ndarray:
    """SNFH around a core (NETC, ET inside it) and a separate resection cavity (4)."""
    seg = np.zeros(SHAPE, np.uint8)
    seg[4:14, 4:14, 4:12] = 2
    seg[6:12, 6:12, 5:11] = 1
    if with_et:
        seg[8:10, 8:10, 7:9] = 3
    seg[16:22, 12:18, 4:10] = 4  # the cavity: 216 voxels
    return seg


@pytest.fixture
def truth2024(tmp_path, make_case, save_nifti) -> Path:
    """A raw manifest of two BraTS 2024 cases, ingested with --labels brats2024; case b holds ET (3)
    and a resection cavity (4) together, which only the declared 2024 convention accepts."""
    from brats_seg.ingest.stage import ingest

    for case_id, with_et in (("a", False), ("b", True)):
        folder = make_case(tmp_path / "src", case_id)
        seg = folder / f"{case_id}_seg.nii.gz"
        save_nifti(seg, post_treatment_labels(with_et=with_et), nib.load(str(seg)).affine)
    raw = tmp_path / "raw.json"
    ingest([tmp_path / "src"], raw, labels="brats2024")
    manifest = json.loads(raw.read_text())
    assert {c["id"]: c["label_convention"] for c in manifest["cases"]} == {"a": "brats2024", "b": "brats2024"}
    return raw


def test_ingest_refuses_3_and_4_unless_2024_is_declared(tmp_path, run_cli, make_case, save_nifti):
    folder = make_case(tmp_path / "src", "c")
    seg = folder / "c_seg.nii.gz"
    save_nifti(seg, post_treatment_labels(with_et=True), nib.load(str(seg)).affine)
    code, _, err = run_cli("ingest", tmp_path / "src", "--out", tmp_path / "auto.json")
    assert code == 2 and "--labels brats2024" in err and not (tmp_path / "auto.json").exists()
    code, _, err = run_cli("ingest", tmp_path / "src", "--out", tmp_path / "2021.json", "--labels", "brats2021")
    assert code == 2 and "mix conventions" in err
    code, _, err = run_cli("ingest", tmp_path / "src", "--out", tmp_path / "2024.json", "--labels", "brats2024")
    assert code == 0, err


def write_masks(folder: Path, truth: Path, change=lambda seg: seg) -> Path:
    for case_id in ("a", "b"):
        src = nib.load(str(truth.parent / "src" / case_id / f"{case_id}_seg.nii.gz"))
        data = change(np.asarray(src.dataobj).copy())
        folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data.astype(np.uint8), src.affine), str(folder / f"{case_id}.nii.gz"))
    return folder


def by_region(out: Path) -> dict[str, list[dict]]:
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    return {r: [row for row in rows if row["region"] == r] for r in dict.fromkeys(row["region"] for row in rows)}


def test_a_2024_truth_scores_rc_as_its_own_region(tmp_path, truth2024, run_cli):
    pred = write_masks(tmp_path / "pred", truth2024)
    code, out, err = run_cli("evaluate", "--pred", pred, "--truth", truth2024, "--out", tmp_path / "eval",
                             "--lesion-wise")
    assert code == 0, err
    rows = by_region(tmp_path / "eval")
    assert list(rows) == ["WT", "TC", "ET", "RC"] and all(len(v) == 2 for v in rows.values())
    assert all(float(r["dice"]) == 1.0 and float(r["lesion_dice"]) == 1.0 for v in rows.values() for r in v)
    assert float(rows["RC"][0]["volume_truth_ml"]) == pytest.approx(216 * 0.001)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert list(summary["regions"]) == ["WT", "TC", "ET", "RC"] and "| RC | 1.000" in out


def test_the_cavity_is_not_tumour_when_scored(tmp_path, truth2024):
    """A prediction without the cavity, in 2023 labels, is perfect on WT/TC/ET and misses RC."""
    from brats_seg.evaluate.stage import evaluate

    pred = write_masks(tmp_path / "pred", truth2024, lambda seg: np.where(seg == 4, 0, seg))
    summary = evaluate(pred, truth2024, tmp_path / "eval", pred_convention="brats2023")
    assert summary["mean_dice"] == 1.0
    assert summary["regions"]["RC"]["dice"]["mean"] == 0.0  # the 2023 prediction cannot express a cavity
    # read as BraTS 2021 instead, the cavity would be ET: the convention decides the score
    as_et = write_masks(tmp_path / "pred21", truth2024, lambda seg: np.where(seg == 3, 1, seg))
    summary21 = evaluate(as_et, truth2024, tmp_path / "eval21", pred_convention="brats2021")
    assert summary21["regions"]["WT"]["dice"]["mean"] < 0.95 and summary21["regions"]["RC"]["dice"]["mean"] == 0.0


def test_predictions_outside_the_convention_are_one_error_line(tmp_path, truth2024, run_cli):
    pred = write_masks(tmp_path / "pred", truth2024, lambda seg: np.where(seg == 4, 5, seg))
    code, _, err = run_cli("evaluate", "--pred", pred, "--truth", truth2024, "--out", tmp_path / "eval")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "outside the brats2024 convention" in err and "brats2024" in err.split("--pred-convention")[1]
    pred4 = write_masks(tmp_path / "pred4", truth2024)
    code, _, err = run_cli("evaluate", "--pred", pred4, "--truth", truth2024, "--out", tmp_path / "eval",
                           "--pred-convention", "brats2023")
    assert code == 2 and "outside the brats2023 convention" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "eval").exists()
