"""Evaluation numbers against hand-computed cases and MONAI; the stage's files and conventions."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from brats_seg.evaluate.stage import evaluate
from brats_seg.evaluate.metrics import HD95_EMPTY_MM, binary_metrics, hd95_mm
from brats_seg.io.labels import region_masks

torch.set_num_threads(1)


def cube(shape, lo, size) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, a + size) for a in lo)] = True
    return mask


def test_shifted_cube_by_hand():
    ref = cube((10, 10, 10), (3, 3, 3), 4)  # 64 voxels
    pred = cube((10, 10, 10), (4, 3, 3), 4)  # shifted one voxel along x: 48 shared
    m = binary_metrics(pred, ref, (1.0, 1.0, 1.0))
    assert m["dice"] == pytest.approx(2 * 48 / 128)
    assert m["sensitivity"] == pytest.approx(48 / 64)
    assert m["specificity"] == pytest.approx(920 / 936)  # TN 1000-48-16-16, FP 16
    assert m["volume_pred_ml"] == pytest.approx(0.064) and m["volume_truth_ml"] == pytest.approx(0.064)
    assert m["hd95_mm"] == pytest.approx(1.0)  # 16 of 56 surface voxels are 1 voxel off
    assert hd95_mm(pred, ref, (2.0, 1.0, 1.0)) == pytest.approx(2.0)  # the shift is along a 2 mm axis
    assert binary_metrics(pred, ref, (2.0, 1.0, 1.0))["volume_pred_ml"] == pytest.approx(0.128)


def test_single_voxels_use_the_spacing():
    pred, ref = np.zeros((6, 6, 12), bool), np.zeros((6, 6, 12), bool)
    pred[2, 2, 2], ref[2, 2, 7] = True, True
    assert hd95_mm(pred, ref, (1.0, 1.0, 3.0)) == pytest.approx(15.0)
    pred[2, 2, 2], pred[5, 2, 2] = False, True  # now 3 voxels in x (0.5 mm) and 5 in z (3 mm)
    assert hd95_mm(pred, ref, (0.5, 1.0, 3.0)) == pytest.approx(np.hypot(1.5, 15.0))


def test_brats_conventions_for_empty_regions():
    empty, some = np.zeros((8, 8, 8), bool), cube((8, 8, 8), (2, 2, 2), 2)
    both = binary_metrics(empty, empty, (1, 1, 1))
    assert both["dice"] == 1.0 and both["hd95_mm"] == 0.0 and both["sensitivity"] == 1.0 and both["specificity"] == 1.0
    missed = binary_metrics(empty, some, (1, 1, 1))
    assert missed["dice"] == 0.0 and missed["hd95_mm"] == HD95_EMPTY_MM and missed["sensitivity"] == 0.0
    invented = binary_metrics(some, empty, (1, 1, 1))
    assert invented["dice"] == 0.0 and invented["hd95_mm"] == HD95_EMPTY_MM == 373.13
    assert invented["sensitivity"] == 1.0 and invented["specificity"] == pytest.approx(504 / 512)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecated internal argument
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_monai_on_random_blobs(seed):
    from monai.metrics import DiceMetric, compute_hausdorff_distance
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape, spacing = (40, 36, 24), (0.9, 1.1, 2.5)
    blobs = [ndimage.gaussian_filter(rng.normal(size=shape), 3) for _ in range(2)]
    pred, ref = blobs[0] > 0.05, blobs[1] > 0.05
    ours = binary_metrics(pred, ref, spacing)
    p, r = torch.from_numpy(pred)[None, None].float(), torch.from_numpy(ref)[None, None].float()
    dice = DiceMetric(include_background=True, reduction="none")(p, r)
    hd = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=list(spacing))
    assert ours["dice"] == pytest.approx(float(dice.item()), abs=1e-6)
    assert ours["hd95_mm"] == pytest.approx(float(hd.item()), abs=1e-4)
    assert 0 < ours["dice"] < 1 and ours["hd95_mm"] > 0


def test_regions_from_labels():
    ref = np.zeros((12, 12, 12), np.uint8)
    ref[2:10, 2:10, 2:10] = 2
    ref[4:8, 4:8, 4:8] = 1
    ref[5:7, 5:7, 5:7] = 3
    pred = ref.copy()
    pred[pred == 3] = 1  # enhancing tumour called necrosis: WT and TC unchanged, ET missed
    p, r = region_masks(pred), region_masks(ref)
    scores = {name: binary_metrics(p[name], r[name], (1, 1, 1)) for name in ("WT", "TC", "ET")}
    assert scores["WT"]["dice"] == 1.0 and scores["TC"]["dice"] == 1.0
    assert scores["ET"]["dice"] == 0.0 and scores["ET"]["hd95_mm"] == HD95_EMPTY_MM
    assert scores["TC"]["volume_truth_ml"] == pytest.approx(0.064)


@pytest.fixture
def truth(tmp_path, make_case) -> Path:
    from brats_seg.ingest.stage import ingest

    for i in range(3):
        make_case(tmp_path / "src", f"case{i}", seed=i)
    make_case(tmp_path / "src", "nolabel", seg=False)
    ingest([tmp_path / "src"], tmp_path / "raw.json")
    return tmp_path / "raw.json"


def copy_masks(truth: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i in range(3):
        shutil.copy(truth.parent / "src" / f"case{i}" / f"case{i}_seg.nii.gz", folder / f"case{i}.nii.gz")
    return folder


def test_evaluate_folder_of_masks(tmp_path, truth, save_nifti):
    import nibabel as nib

    pred = copy_masks(truth, tmp_path / "pred")
    img = nib.load(str(pred / "case1.nii.gz"))
    worse = np.asarray(img.dataobj).copy()
    worse[worse == 4] = 1  # ET called NCR in one case
    save_nifti(pred / "case1.nii.gz", worse, img.affine)
    (pred / "case2.nii.gz").unlink()
    summary = evaluate(pred, truth, tmp_path / "eval")
    assert summary["cases"] == ["case0", "case1"] and summary["missing_predictions"] == ["case2"]
    assert summary["unlabelled_cases"] == ["nolabel"]
    et = summary["regions"]["ET"]["dice"]
    assert et["mean"] == pytest.approx(0.5) and et["median"] == pytest.approx(0.5) and et["std"] == pytest.approx(0.5)
    assert summary["regions"]["WT"]["dice"]["mean"] == 1.0 and summary["regions"]["WT"]["hd95_mm"]["max"] == 0.0
    assert summary["mean_dice"] == pytest.approx((1 + 1 + 0.5) / 3)
    rows = list(csv.DictReader(open(tmp_path / "eval" / "metrics.csv")))
    assert len(rows) == 6 and rows[0].keys() >= {"case", "region", "dice", "hd95_mm", "volume_pred_ml"}
    et_rows = [r for r in rows if r["region"] == "ET"]
    assert float(et_rows[1]["dice"]) == 0.0 and float(et_rows[1]["hd95_mm"]) == HD95_EMPTY_MM
    assert (tmp_path / "eval" / "boxplot.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["cases"] == ["case0", "case1"]


def test_evaluate_predictions_manifest_in_another_convention(tmp_path, truth):
    """Masks written in BraTS 2023 labels are read through their manifest's convention."""
    import nibabel as nib

    from brats_seg.io.manifest import new_manifest, save_manifest
    from brats_seg.core.hashing import sha256_file

    pred = tmp_path / "pred"
    manifest = new_manifest("predictions", {}, None)
    for i in range(3):
        src = nib.load(str(truth.parent / "src" / f"case{i}" / f"case{i}_seg.nii.gz"))
        data = np.asarray(src.dataobj).copy()
        data[data == 4] = 3
        path = pred / "masks" / f"case{i}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, src.affine, src.header), str(path))
        manifest["cases"].append({"id": f"case{i}", "mask": f"masks/case{i}.nii.gz", "sha256": sha256_file(path),
                                  "label_convention": "brats2023"})
    save_manifest(pred / "predictions.json", manifest)
    summary = evaluate(pred, truth, tmp_path / "eval")
    assert summary["mean_dice"] == 1.0 and len(summary["cases"]) == 3
    # read as the truth's convention (brats2021), the 3s are invalid: one clear error
    from brats_seg.errors import InputError

    with pytest.raises(InputError, match="outside the brats2021 convention"):
        evaluate(pred / "masks", truth, tmp_path / "eval2")


def test_cli_evaluate_and_grid_mismatch(tmp_path, truth, run_cli, save_nifti):
    pred = copy_masks(truth, tmp_path / "pred")
    code, out, err = run_cli("evaluate", "--pred", pred, "--truth", truth, "--out", tmp_path / "eval")
    assert code == 0, err
    assert "| WT | 1.000" in out
    save_nifti(pred / "case0.nii.gz", np.zeros((24, 20, 15), np.uint8))
    code, _, err = run_cli("evaluate", "--pred", pred, "--truth", truth, "--out", tmp_path / "eval")
    assert code == 2 and "expected the prediction on the truth's grid" in err and len(err.strip().splitlines()) == 1
