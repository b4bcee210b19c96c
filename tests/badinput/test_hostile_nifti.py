"""Hostile NIfTI content (issue "hostile inputs", first group): header scaling, images without a zero
border, values beyond float32, complex and RGB voxels, a brain mask beside the images, a gzip bomb,
absurd voxel sizes. Each test writes its own tiny case folder (24x20x16), runs the real command and
checks the promised outcome: exit 2 with one `error:` line naming the file, or the correct result
where the input is legitimate; the inputs are byte-identical afterwards.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.badinput.builders import snapshot
from tests.badinput.hostile_builders import (CHANNELS, SMALL, call, gzip_bomb, labels, one_error_line,
                                             phantom, run_bounded, save_nifti, untouched, write_case)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny random 3D run at native spacing (checkpoints/best.pt)."""
    from tests.run_fixtures import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("hostile_nifti") / "run")


@pytest.fixture(scope="module")
def model_1mm(tmp_path_factory) -> Path:
    """The same tiny run, but its preprocessing resamples to 1 mm (so predict resamples every input)."""
    from tests.run_fixtures import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("hostile_nifti_1mm") / "run", spacing=[1.0, 1.0, 1.0])


def _entries(manifest: Path) -> dict:
    return {c["id"]: c for c in json.loads(manifest.read_text())["cases"]}


def _array(pre: Path, case: str, key: str) -> np.ndarray:
    entry = _entries(pre / "preprocessed.json")[case]
    return np.asarray(np.load(pre / entry[key]))


def _ingest_and_preprocess(run_cli, src: Path, tmp: Path, *ingest_extra) -> Path:
    code, _, err = call(run_cli, "ingest", src, "--out", tmp / "raw.json", "--workers", 1, *ingest_extra)
    assert code == 0 and "Traceback" not in err, err
    code, _, err = call(run_cli, "preprocess", tmp / "raw.json", "--out", tmp / "pre", "--workers", 1)
    assert "Traceback" not in err, err[-3000:]
    assert code == 0, err
    return tmp / "pre"


# ---------------------------------------------------------------------------------------------- scl_slope / scl_inter

def test_label_map_slope_gives_the_true_labels(tmp_path, run_cli):
    """A uint8 label map stored 0/1/2 with scl_slope 2 holds the BraTS 2021 labels 0/2/4 (edema, ET):
    it must preprocess exactly like the same labels stored unscaled (canonical 0/2/3), not as NCR/edema."""
    src = tmp_path / "src"
    write_case(src, "Plain_0000", seg=labels(values=(2, 4)))
    write_case(src, "Scaled_0000", seg=labels(values=(1, 2)), seg_slope=2.0, seg_inter=0.0)
    before = snapshot(src)
    pre = _ingest_and_preprocess(run_cli, src, tmp_path, "--labels", "brats2021")
    plain, scaled = _array(pre, "Plain_0000", "seg"), _array(pre, "Scaled_0000", "seg")
    assert sorted(np.unique(plain).tolist()) == [0, 2, 3]
    assert sorted(np.unique(scaled).tolist()) == [0, 2, 3], "scl_slope of the label map was ignored"
    np.testing.assert_array_equal(scaled, plain)
    untouched(before, src)


@pytest.mark.parametrize("slope,inter", [(1.0, 100.0), (0.5, 100.0)], ids=["inter", "slope_and_inter"])
def test_image_scaling_gives_the_true_intensities(tmp_path, run_cli, slope, inter):
    """T1 stored as (true - inter) / slope with scl_slope/scl_inter: the true background is 0 again, so
    the case must preprocess like the unscaled copy (same crop, same z-scored voxels)."""
    src = tmp_path / "src"
    write_case(src, "Plain_0000")
    stored = ((phantom(channel=0) - np.float32(inter)) / np.float32(slope)).astype(np.float32)
    write_case(src, "Scaled_0000", images={"t1": stored}, t1=(slope, inter))
    before = snapshot(src)
    pre = _ingest_and_preprocess(run_cli, src, tmp_path)
    plain, scaled = _array(pre, "Plain_0000", "image"), _array(pre, "Scaled_0000", "image")
    assert scaled.shape == plain.shape, f"crop differs: {scaled.shape} vs {plain.shape} (intercept ignored)"
    np.testing.assert_allclose(scaled.astype(np.float32), plain.astype(np.float32), atol=2e-2)
    untouched(before, src)


# ---------------------------------------------------------------------------------------------- no zero border

def _no_border(kind: str) -> dict:
    if kind == "not_skull_stripped":  # every voxel > 0: no zero border at all
        return {c: phantom(channel=i) + np.float32(10.0) for i, c in enumerate(CHANNELS)}
    return {"flair": np.full(SMALL, 100.0, np.float32)}  # a constant modality


KINDS = ["not_skull_stripped", "constant_modality"]
RAS = np.eye(4)  # RAS on disk: no reorientation, so a full-volume crop is the file's own voxels


@pytest.mark.parametrize("kind", KINDS)
def test_image_without_zero_border_predicts_one_case(tmp_path, run_cli, model, kind):
    case = write_case(tmp_path / "src", "Open_0000", images=_no_border(kind), seg=False, affine=RAS)
    before = snapshot(tmp_path / "src")
    out = tmp_path / "mask.nii.gz"
    code, _, err = call(run_cli, "predict", "--model", model, "--case", case, "--out", out, "--threads", 1)
    assert "Traceback" not in err and code == 0, err[-3000:]
    assert nib.load(str(out)).shape == SMALL
    untouched(before, tmp_path / "src")


@pytest.mark.parametrize("command", ["preprocess", "predict"])
@pytest.mark.parametrize("kind", KINDS)
def test_image_without_zero_border_in_a_batch(tmp_path, run_cli, model, kind, command):
    """Batch preprocess / predict --manifest with one such case among good ones: every case is done, exit 0."""
    src = tmp_path / "src"
    write_case(src, "Good_0000", affine=RAS)
    write_case(src, "Open_0000", images=_no_border(kind), affine=RAS)
    write_case(src, "Good_0001", affine=RAS)
    code, _, err = call(run_cli, "ingest", src, "--out", tmp_path / "raw.json", "--workers", 1)
    assert code == 0, err
    before = snapshot(tmp_path)
    if command == "preprocess":
        argv, manifest = ["preprocess", tmp_path / "raw.json", "--out", tmp_path / "out", "--workers", 1], "preprocessed.json"
    else:
        argv = ["predict", "--model", model, "--manifest", tmp_path / "raw.json", "--out", tmp_path / "out", "--threads", 1]
        manifest = "predictions.json"
    code, _, err = call(run_cli, *argv)
    assert "Traceback" not in err, err[-3000:]
    assert code == 0, err
    assert sorted(_entries(tmp_path / "out" / manifest)) == ["Good_0000", "Good_0001", "Open_0000"]
    if command == "predict":
        assert nib.load(str(tmp_path / "out" / "masks" / "Open_0000.nii.gz")).shape == SMALL
    untouched(before, tmp_path, tmp_path / "out")


# ---------------------------------------------------------------------------------------------- voxel types

def _voxels(kind: str) -> np.ndarray:
    base = phantom(channel=0)
    if kind == "float64_beyond_float32":
        data = base.astype(np.float64)
        data[12, 10, 8] = 1e39
        return data
    if kind == "complex":
        return (base + 1j * base).astype(np.complex64)
    rgb = np.zeros(SMALL, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])  # NIfTI RGB24
    for name in "RGB":
        rgb[name] = np.clip(base, 0, 255).astype(np.uint8)
    return rgb


VOXEL_KINDS = ["float64_beyond_float32", "complex", "rgb24"]


def _source_with_bad_voxels(tmp_path, kind):
    """A source of one good case and one whose T1 has unusable voxels; (source, the bad file)."""
    src = tmp_path / "src"
    write_case(src, "Good_0000")
    case = write_case(src, "Bad_0000")
    return src, save_nifti(case / "Bad_0000_t1.nii.gz", _voxels(kind))


@pytest.mark.parametrize("kind", VOXEL_KINDS)
def test_unusable_voxel_type_is_refused_at_ingest(tmp_path, run_cli, kind):
    src, bad = _source_with_bad_voxels(tmp_path, kind)
    before = snapshot(src)
    code, _, err = call(run_cli, "ingest", src, "--out", tmp_path / "raw.json", "--workers", 1)
    one_error_line(code, err, bad)
    assert not (tmp_path / "raw.json").exists()
    untouched(before, src)


@pytest.mark.parametrize("kind", VOXEL_KINDS)
def test_unusable_voxel_type_is_rejected_with_skip_invalid(tmp_path, run_cli, kind):
    src, bad = _source_with_bad_voxels(tmp_path, kind)
    before = snapshot(src)
    code, _, err = call(run_cli, "ingest", src, "--out", tmp_path / "raw.json", "--workers", 1, "--skip-invalid")
    assert "Traceback" not in err, err[-3000:]
    assert code == 0, err
    manifest = json.loads((tmp_path / "raw.json").read_text())
    assert [c["id"] for c in manifest["cases"]] == ["Good_0000"]
    assert [r["id"] for r in manifest["rejected"]] == ["Bad_0000"]
    reason = manifest["rejected"][0]["reason"]
    assert reason.startswith("error: ") and str(bad) in reason and "\n" not in reason, reason
    assert "Infinity" not in (tmp_path / "raw.json").read_text() and "NaN" not in (tmp_path / "raw.json").read_text()
    untouched(before, src)


# ---------------------------------------------------------------------------------------------- naming

def test_brain_mask_alone_is_not_taken_as_the_label_map(tmp_path, run_cli):
    """`<case>_brain_mask.nii.gz` beside the images (no label map): not a label file."""
    src = tmp_path / "src"
    case = write_case(src, "Case_0000", seg=False)
    mask = save_nifti(case / "Case_0000_brain_mask.nii.gz", (phantom() > 0).astype(np.uint8))
    before = snapshot(src)
    code, _, err = call(run_cli, "ingest", src, "--out", tmp_path / "raw.json", "--workers", 1)
    assert "Traceback" not in err, err[-3000:]
    if code == 2:  # refusing the unknown file is acceptable, with one line naming it
        one_error_line(code, err, mask)
    else:
        assert code == 0, err
        entry = _entries(tmp_path / "raw.json")["Case_0000"]
        assert entry["seg"] is None, f"the brain mask was taken as the label map: {entry['seg']}"
    untouched(before, src)


def test_brain_mask_beside_the_label_map_is_not_a_second_label_map(tmp_path, run_cli):
    src = tmp_path / "src"
    case = write_case(src, "Case_0000")
    save_nifti(case / "Case_0000_brain_mask.nii.gz", (phantom() > 0).astype(np.uint8))
    before = snapshot(src)
    code, _, err = call(run_cli, "ingest", src, "--out", tmp_path / "raw.json", "--workers", 1)
    assert "Traceback" not in err and code == 0, err
    entry = _entries(tmp_path / "raw.json")["Case_0000"]
    assert entry["seg"]["path"].endswith("Case_0000_seg.nii.gz"), entry["seg"]
    untouched(before, src)


# ---------------------------------------------------------------------------------------------- size bounds

def test_gzip_bomb_inflation_is_bounded_by_the_header(tmp_path):
    """A ~0.5 MB .nii.gz whose header declares 24x20x16 float32 but which inflates to 455 MB: ingest must
    not inflate past what the header declares (bounded memory and time)."""
    src = tmp_path / "src"
    case = write_case(src, "Bomb_0000")
    bomb = gzip_bomb(case / "Bomb_0000_t2.nii.gz", 455)
    assert bomb.stat().st_size < 1_000_000
    before = snapshot(src)
    res = run_bounded(["ingest", src, "--out", tmp_path / "raw.json", "--workers", 1], tmp_path, timeout=60,
                      max_rss_mb=300)
    assert res["killed"] is None, f"ingest of a gzip bomb: {res['killed']} (peak {res['peak_mb']:.0f} MB)"
    assert "Traceback" not in res["err"], res["err"][-3000:]
    if res["code"] == 2:
        one_error_line(res["code"], res["err"], bomb)
    else:
        assert res["code"] == 0, res["err"]
    untouched(before, src)


def _spaced_case(src: Path, spacing: float) -> Path:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    return write_case(src, "Vox_0000", affine=affine)


@pytest.mark.parametrize("spacing", [0.0013, 250.0], ids=["1.3um", "25cm"])
def test_voxel_size_out_of_range_is_refused_at_ingest(tmp_path, run_cli, spacing):
    src = tmp_path / "src"
    _spaced_case(src, spacing)
    before = snapshot(src)
    code, _, err = call(run_cli, "ingest", src, "--out", tmp_path / "raw.json", "--workers", 1)
    one_error_line(code, err, "Vox_0000")
    assert not (tmp_path / "raw.json").exists()
    untouched(before, src)


@pytest.mark.parametrize("spacing", [0.0013, 250.0], ids=["1.3um", "25cm"])
def test_voxel_size_out_of_range_is_refused_by_predict(tmp_path, model_1mm, spacing):
    """predict resamples to the run's 1 mm: a 1x1x1 grid (garbage mask) or a grid of 10^11 voxels. Both
    must be refused with one line, quickly and in bounded memory, and no mask written."""
    case = _spaced_case(tmp_path / "src", spacing)
    before = snapshot(tmp_path / "src")
    out = tmp_path / "mask.nii.gz"
    res = run_bounded(["predict", "--model", model_1mm, "--case", case, "--out", out, "--threads", 1], tmp_path,
                      timeout=90, max_rss_mb=2000)
    assert res["killed"] is None, f"predict: {res['killed']} (peak {res['peak_mb']:.0f} MB)"
    one_error_line(res["code"], res["err"], "Vox_0000")
    assert not out.exists()
    untouched(before, tmp_path / "src")
