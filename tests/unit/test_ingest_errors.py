"""Strict validation at ingestion: every bad input ends with exit code 2 and one exact error line.

Each test builds one broken case in a temp folder and runs the real CLI entry point
(`brats_seg.cli.main`); one test runs `python -m brats_seg` in a subprocess.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import BRATS_AFFINE, REPO_ROOT, SHAPE, label_map, make_case, phantom, save_nifti

CHANNELS = "t1, t1ce, t2, flair"
UNREADABLE = r"unreadable or truncated NIfTI \(.+\); expected a complete \.nii/\.nii\.gz file"
GRID = "of the case's first image; expected all modalities on one grid (or pass --register to register them rigidly onto the t1ce)"


def one_error_line(code: int, err: str) -> str:
    """Exit code 2 and exactly one non-empty stderr line starting 'error: '; return that line."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"expected exit code 2, got {code}; stderr: {err!r}"
    assert "Traceback" not in err
    assert len(lines) == 1, f"expected one error line, got {lines!r}"
    assert lines[0].startswith("error: ")
    return lines[0]


def check_line(line: str, expected) -> None:
    if isinstance(expected, re.Pattern):
        assert expected.fullmatch(line), f"{line!r} does not match {expected.pattern!r}"
    else:
        assert line == expected


def ingest(run_cli, src: Path, out: Path, *extra):
    return run_cli("ingest", src, "--out", out, *extra)


def _rewrite(path: Path, data=None, affine=None, **kw) -> Path:
    """Replace a case file by a variant (other data and/or geometry)."""
    save_nifti(path, phantom() if data is None else data, BRATS_AFFINE if affine is None else affine, **kw)
    return path


def _shift_affine(dx=0.0, zoom_z=1.0):
    a = BRATS_AFFINE.copy()
    a[0, 3] += dx
    a[2, 2] *= zoom_z
    return a


# --- builders: each breaks case c1 inside `ds` and returns the exact expected line (str or regex) ----

def b_missing_one(ds):
    c = make_case(ds, "c1")
    (c / "c1_t2.nii.gz").unlink()
    return f"error: c1: missing modality files: t2 (found: t1, t1ce, flair); expected one file per modality {CHANNELS}"


def b_missing_two(ds):
    c = make_case(ds, "c1")
    (c / "c1_t1.nii.gz").unlink()
    (c / "c1_flair.nii.gz").unlink()
    return f"error: c1: missing modality files: t1, flair (found: t1ce, t2); expected one file per modality {CHANNELS}"


def b_duplicate_nii_and_gz(ds):
    c = make_case(ds, "c1")
    save_nifti(c / "c1_t1.nii", phantom())
    return "error: c1: ambiguous t1: several files match (c1_t1.nii, c1_t1.nii.gz); expected exactly one"


def b_ambiguous_t1ce_t1c(ds):
    c = make_case(ds, "c1")
    shutil.copy(c / "c1_t1ce.nii.gz", c / "c1_t1c.nii.gz")
    return "error: c1: ambiguous t1ce: several files match (c1_t1c.nii.gz, c1_t1ce.nii.gz); expected exactly one"


def b_two_label_maps(ds):
    c = make_case(ds, "c1")
    shutil.copy(c / "c1_seg.nii.gz", c / "c1_label.nii.gz")
    return "error: c1: ambiguous label map: several files match (c1_label.nii.gz, c1_seg.nii.gz); expected at most one"


def b_garbage_gz(ds):
    p = make_case(ds, "c1") / "c1_t2.nii.gz"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    return re.compile(re.escape(f"error: {p}: ") + UNREADABLE)


def b_empty(ds):
    p = make_case(ds, "c1") / "c1_t2.nii.gz"
    p.write_bytes(b"")
    return f"error: {p}: file is empty (0 bytes); expected a volume file"


def b_truncated_gz(ds):
    p = make_case(ds, "c1") / "c1_t2.nii.gz"
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    return re.compile(re.escape(f"error: {p}: ") + UNREADABLE)


def b_truncated_nii(ds):
    p = make_case(ds, "c1", suffix=".nii") / "c1_t2.nii"
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    return re.compile(re.escape(f"error: {p}: ") + UNREADABLE)


def b_gz_without_trailer(ds):
    """All voxel bytes present but the gzip trailer (CRC32 + size) cut off: still a truncated file."""
    p = make_case(ds, "c1") / "c1_t2.nii.gz"
    p.write_bytes(p.read_bytes()[:-8])
    return re.compile(re.escape(f"error: {p}: ") + UNREADABLE)


def b_gz_bad_crc(ds):
    """Intact deflate stream, wrong CRC32 in the trailer: the decompressed voxels cannot be trusted."""
    p = make_case(ds, "c1") / "c1_t2.nii.gz"
    raw = bytearray(p.read_bytes())
    raw[-8:-4] = bytes(b ^ 0xFF for b in raw[-8:-4])
    p.write_bytes(bytes(raw))
    return re.compile(re.escape(f"error: {p}: ") + UNREADABLE)


def b_png_named_nifti(ds):
    p = make_case(ds, "c1") / "c1_t2.nii.gz"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(600))
    return re.compile(re.escape(f"error: {p}: ") + UNREADABLE)


def b_text_named_nii(ds):
    c = make_case(ds, "c1")
    (c / "c1_t2.nii.gz").unlink()
    p = c / "c1_t2.nii"
    p.write_text("this is a text file, not a NIfTI volume\n" * 20)
    return re.compile(re.escape(f"error: {p}: ") + UNREADABLE)


def b_4d(ds):
    p = make_case(ds, "c1") / "c1_t2.nii.gz"
    _rewrite(p, np.stack([phantom(), phantom()], axis=-1))
    return f"error: {p}: has 4 dimensions [24, 20, 16, 2]; expected a 3D volume"


def b_shape(ds):
    p = make_case(ds, "c1") / "c1_t1ce.nii.gz"
    _rewrite(p, phantom((24, 20, 15)))
    return f"error: {p}: shape [24, 20, 15] differs from [24, 20, 16] {GRID}"


def b_spacing(ds):
    p = make_case(ds, "c1") / "c1_t2.nii.gz"
    _rewrite(p, affine=_shift_affine(zoom_z=1.5))
    return f"error: {p}: spacing (1, 1, 1.5) differs from (1, 1, 1) {GRID}"


def b_origin(ds):
    p = make_case(ds, "c1") / "c1_flair.nii.gz"
    _rewrite(p, affine=_shift_affine(dx=2.0))
    return f"error: {p}: origin (2, 19, 0) differs from (0, 19, 0) {GRID}"


def b_direction(ds):
    p = make_case(ds, "c1") / "c1_t2.nii.gz"
    a = BRATS_AFFINE.copy()
    a[0, 0] = 1.0  # x axis flipped, same origin and spacing
    _rewrite(p, affine=a)
    return f"error: {p}: direction RPS differs from LPS by 180 degrees {GRID}"


def b_qform_sform(ds):
    p = make_case(ds, "c1") / "c1_t1.nii.gz"
    _rewrite(p, qform=_shift_affine(dx=5.0))
    return (f"error: {p}: qform and sform are both set and disagree; expected one geometry "
            "(fix the header, e.g. copy the sform into the qform)")


def b_nan(ds):
    p = make_case(ds, "c1") / "c1_t1ce.nii.gz"
    data = phantom()
    data[10, 10, 8] = np.nan
    _rewrite(p, data)
    return f"error: {p}: contains NaN or Inf values; expected finite intensities"


def b_inf(ds):
    p = make_case(ds, "c1") / "c1_flair.nii.gz"
    data = phantom()
    data[3, 4, 5] = -np.inf
    _rewrite(p, data)
    return f"error: {p}: contains NaN or Inf values; expected finite intensities"


def b_all_zero(ds):
    p = make_case(ds, "c1") / "c1_t2.nii.gz"
    _rewrite(p, np.zeros(SHAPE, np.float32))
    return f"error: {p}: is all zero; expected an image with signal"


def b_label_5(ds):
    p = make_case(ds, "c1", labels=(1, 2, 5)) / "c1_seg.nii.gz"
    return f"error: {p}: label values [5] are outside the brats2021 convention; expected [0, 1, 2, 4]"


def b_label_float(ds):
    p = make_case(ds, "c1") / "c1_seg.nii.gz"
    seg = label_map(SHAPE, (1, 2, 4)).astype(np.float32)
    seg[12, 10, 8] = 1.5
    _rewrite(p, seg)
    return f"error: {p}: label map has non-integer values; expected integer labels"


def b_label_3_and_4(ds):
    p = make_case(ds, "c1", labels=(1, 2, 3, 4)) / "c1_seg.nii.gz"
    return (f"error: {p}: label values [0, 1, 2, 3, 4] mix conventions (3 and 4 together); "
            "expected BraTS 2021 {0,1,2,4} or BraTS 2023 {0,1,2,3}, or declare BraTS 2024 "
            "post-treatment labels (4 = resection cavity) with --labels brats2024")


def b_label_other_shape(ds):
    p = make_case(ds, "c1") / "c1_seg.nii.gz"
    _rewrite(p, label_map((24, 20, 18)))
    return (f"error: {p}: label map is on another grid: shape [24, 20, 18] differs from [24, 20, 16] "
            "of the images; expected the images' grid")


def b_label_other_origin(ds):
    p = make_case(ds, "c1") / "c1_seg.nii.gz"
    _rewrite(p, label_map(), affine=_shift_affine(dx=-3.0))
    return (f"error: {p}: label map is on another grid: origin (-3, 19, 0) differs from (0, 19, 0) "
            "of the images; expected the images' grid")


BAD_INPUTS = [
    b_missing_one, b_missing_two, b_duplicate_nii_and_gz, b_ambiguous_t1ce_t1c, b_two_label_maps,
    b_garbage_gz, b_empty, b_truncated_gz, b_truncated_nii, b_gz_without_trailer, b_gz_bad_crc,
    b_png_named_nifti, b_text_named_nii, b_4d, b_shape, b_spacing, b_origin, b_direction, b_qform_sform,
    b_nan, b_inf, b_all_zero, b_label_5, b_label_float, b_label_3_and_4, b_label_other_shape,
    b_label_other_origin,
]


@pytest.mark.parametrize("build", BAD_INPUTS, ids=lambda f: f.__name__[2:])
def test_bad_input_exits_2_with_one_exact_line(tmp_path, run_cli, build):
    ds = tmp_path / "ds"
    expected = build(ds)
    out = tmp_path / "raw.json"
    code, _, err = ingest(run_cli, ds, out)
    check_line(one_error_line(code, err), expected)
    assert not out.exists()


def test_bad_input_through_a_real_subprocess(tmp_path):
    ds = tmp_path / "ds"
    expected = b_missing_one(ds)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-m", "brats_seg", "ingest", str(ds), "--out", str(tmp_path / "raw.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [expected]


def test_truncated_file_through_a_real_subprocess(tmp_path):
    ds = tmp_path / "ds"
    expected = b_truncated_gz(ds)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-m", "brats_seg", "ingest", str(ds), "--out", str(tmp_path / "raw.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    check_line(proc.stderr.splitlines()[0], expected)


def test_explicit_convention_refuses_values_outside_it(tmp_path, run_cli):
    p = make_case(tmp_path / "ds", "c1", labels=(1, 2, 3)) / "c1_seg.nii.gz"
    code, _, err = ingest(run_cli, tmp_path / "ds", tmp_path / "raw.json", "--labels", "brats2021")
    assert one_error_line(code, err) == (
        f"error: {p}: label values [3] are outside the brats2021 convention; expected [0, 1, 2, 4]")


def test_subtle_direction_mismatch_is_refused_with_an_informative_message(tmp_path, run_cli):
    """A 2-degree rotation keeps the axis codes (LPS) but is a different grid; the message must show a difference."""
    p = make_case(tmp_path / "ds", "c1") / "c1_t2.nii.gz"
    theta = np.deg2rad(2.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    a = BRATS_AFFINE.copy()
    a[:3, :3] = a[:3, :3] @ rot
    _rewrite(p, affine=a)
    code, _, err = ingest(run_cli, tmp_path / "ds", tmp_path / "raw.json")
    line = one_error_line(code, err)
    assert line.startswith(f"error: {p}: direction ")
    found, _, expected = line.removeprefix(f"error: {p}: direction ").partition(" differs from ")
    expected = expected.removesuffix(f" {GRID}")
    assert found != expected, f"the message does not say how the directions differ: {line!r}"


def test_symlink_out_of_the_dataset_root_is_followed_recorded_and_held_to_its_target(tmp_path, run_cli):
    """A link the user placed in the source is followed at ingest and recorded (its own path in the
    manifest, its target under the case's `links`); once it points elsewhere, later stages refuse it."""
    ds = tmp_path / "ds"
    c = make_case(ds, "c1")
    outside = tmp_path / "elsewhere" / "t2.nii.gz"
    outside.parent.mkdir()
    (c / "c1_t2.nii.gz").rename(outside)
    (c / "c1_t2.nii.gz").symlink_to(outside)
    code, _, err = ingest(run_cli, ds, tmp_path / "raw.json")
    assert code == 0, err
    case = json.loads((tmp_path / "raw.json").read_text())["cases"][0]
    assert case["images"]["t2"]["path"] == "c1/c1_t2.nii.gz"
    assert case["links"] == {"c1/c1_t2.nii.gz": "../elsewhere/t2.nii.gz"}
    moved = tmp_path / "moved" / "t2.nii.gz"
    moved.parent.mkdir()
    shutil.copy2(outside, moved)  # same bytes: only where the link points differs from what ingest saw
    (c / "c1_t2.nii.gz").unlink()
    (c / "c1_t2.nii.gz").symlink_to(moved)
    code, _, err = run_cli("preprocess", tmp_path / "raw.json", "--out", tmp_path / "pre", "--workers", "1")
    assert "Traceback" not in err and code in (1, 2), err
    assert "c1_t2.nii.gz" in err and str(moved) in err and "rerun ingest" in err, err


def test_duplicate_case_ids_across_sources(tmp_path, run_cli):
    a, b = tmp_path / "a", tmp_path / "b"
    make_case(a, "c1")
    make_case(b, "c1")
    code, _, err = run_cli("ingest", a, b, "--out", tmp_path / "raw.json")
    assert one_error_line(code, err) == f"error: c1: duplicate case id in {a} and {b}; expected unique case ids"


def test_source_that_is_not_a_folder(tmp_path, run_cli):
    missing = tmp_path / "nope"
    code, _, err = ingest(run_cli, missing, tmp_path / "raw.json")
    assert one_error_line(code, err) == f"error: {missing}: source is not a folder; expected a dataset or case folder"


def test_case_id_outside_the_manifest_id_pattern_is_a_user_error_not_a_crash(tmp_path, run_cli):
    """A folder named 'case 01' must be ingested or refused with the one-line error, never a traceback."""
    make_case(tmp_path / "ds", "case 01")
    code, _, err = ingest(run_cli, tmp_path / "ds", tmp_path / "raw.json")
    if code != 0:
        line = one_error_line(code, err)
        assert line.startswith("error: case 01: ")


# --- tolerances and things that must be accepted ---------------------------------------------------

def test_differences_within_tolerance_are_accepted(tmp_path, run_cli):
    c = make_case(tmp_path / "ds", "c1")
    a = BRATS_AFFINE.copy()
    a[0, 3] += 1e-5
    a[2, 2] *= 1 + 1e-7
    _rewrite(c / "c1_t2.nii.gz", affine=a)
    code, _, err = ingest(run_cli, tmp_path / "ds", tmp_path / "raw.json")
    assert code == 0, err


def test_trailing_size_one_axis_is_accepted(tmp_path, run_cli):
    c = make_case(tmp_path / "ds", "c1")
    _rewrite(c / "c1_t2.nii.gz", phantom()[..., None])
    code, _, err = ingest(run_cli, tmp_path / "ds", tmp_path / "raw.json")
    assert code == 0, err
    case = json.loads((tmp_path / "raw.json").read_text())["cases"][0]
    assert case["images"]["t2"]["shape"] == [24, 20, 16]


def test_sform_only_and_qform_only_headers_are_accepted(tmp_path, run_cli):
    c = make_case(tmp_path / "ds", "c1")
    _rewrite(c / "c1_t1.nii.gz", qform_code=0, sform_code=1)
    _rewrite(c / "c1_t2.nii.gz", qform_code=1, sform_code=0)
    code, _, err = ingest(run_cli, tmp_path / "ds", tmp_path / "raw.json")
    assert code == 0, err
    images = json.loads((tmp_path / "raw.json").read_text())["cases"][0]["images"]
    assert (images["t1"]["qform_code"], images["t1"]["sform_code"]) == (0, 1)
    assert (images["t2"]["qform_code"], images["t2"]["sform_code"]) == (1, 0)
    assert images["t1"]["affine"] == images["t2"]["affine"] == BRATS_AFFINE.tolist()


def test_empty_label_map_is_a_warning_not_an_error(tmp_path, run_cli):
    make_case(tmp_path / "ds", "c1", labels=())
    code, _, err = ingest(run_cli, tmp_path / "ds", tmp_path / "raw.json")
    assert code == 0, err
    assert "warning: c1: c1_seg.nii.gz: label map is empty (no tumour voxels)" in err.splitlines()
    assert not any(line.startswith("error") for line in err.splitlines())
    case = json.loads((tmp_path / "raw.json").read_text())["cases"][0]
    assert case["seg"]["path"] == "c1/c1_seg.nii.gz"
    assert any("label map is empty" in w for w in case["warnings"])


def test_unlabelled_case_is_valid(tmp_path, run_cli):
    make_case(tmp_path / "ds", "c1", seg=False)
    code, _, err = ingest(run_cli, tmp_path / "ds", tmp_path / "raw.json")
    assert code == 0, err
    case = json.loads((tmp_path / "raw.json").read_text())["cases"][0]
    assert case["seg"] is None and case["label_convention"] is None
    assert sorted(case["images"]) == ["flair", "t1", "t1ce", "t2"]


@pytest.mark.parametrize("workers", [1, 2])
def test_skip_invalid_lists_rejected_cases_and_keeps_the_good_ones(tmp_path, run_cli, workers):
    ds = tmp_path / "ds"
    make_case(ds, "a_good")
    expected_reason = b_missing_one(ds)  # case c1
    bad = make_case(ds, "d_bad", labels=(1, 2, 5)) / "d_bad_seg.nii.gz"
    make_case(ds, "z_good", seg=False)
    out = tmp_path / "raw.json"
    code, _, err = ingest(run_cli, ds, out, "--skip-invalid", "--workers", workers)
    assert code == 0, err
    manifest = json.loads(out.read_text())
    assert [c["id"] for c in manifest["cases"]] == ["a_good", "z_good"]
    assert manifest["rejected"] == [
        {"id": "c1", "reason": expected_reason},
        {"id": "d_bad", "reason": f"error: {bad}: label values [5] are outside the brats2021 convention; "
                                  "expected [0, 1, 2, 4]"},
    ]


def test_failed_ingestion_leaves_an_existing_manifest_untouched(tmp_path, run_cli):
    ds = tmp_path / "ds"
    make_case(ds, "c0")
    b_truncated_gz(ds)  # breaks c1
    out_dir = tmp_path / "manifests"
    out_dir.mkdir()
    out = out_dir / "raw.json"
    previous = b'{"previous": "manifest", "kept": true}\n'
    out.write_bytes(previous)
    code, _, err = ingest(run_cli, ds, out)
    one_error_line(code, err)
    assert out.read_bytes() == previous
    assert sorted(p.name for p in out_dir.iterdir()) == ["raw.json"]  # no temp file left behind


# --- hostile sources (issue "hostile inputs") ---------------------------------------------------------

def test_over_long_case_id_names_the_case_folder(tmp_path, run_cli):
    folder = make_case(tmp_path / "ds", "c" * 129)
    code, _, err = ingest(run_cli, tmp_path / "ds", tmp_path / "raw.json")
    assert one_error_line(code, err) == (f"error: {folder}: case id is 129 characters long; expected at most 128: "
                                         "rename the folder or files")
    assert not (tmp_path / "raw.json").exists()


def test_every_case_rejected_writes_nothing(tmp_path, run_cli):
    ds = tmp_path / "ds"
    make_case(ds, "c1")
    (ds / "c1" / "c1_t2.nii.gz").unlink()
    code, _, err = ingest(run_cli, ds, tmp_path / "raw.json", "--skip-invalid")
    line = one_error_line(code, err)
    assert line.startswith(f"error: {ds}: all 1 case(s) were rejected") and "missing modality files: t2" in line
    assert not (tmp_path / "raw.json").exists()


def test_spacing_range_widens_the_accepted_voxel_sizes(tmp_path, run_cli):
    make_case(tmp_path / "ds", "c1", affine=np.diag([0.02, 0.02, 0.02, 1.0]))
    code, _, err = ingest(run_cli, tmp_path / "ds", tmp_path / "raw.json")
    assert "voxel size (0.02, 0.02, 0.02) mm is outside 0.05 to 20 mm" in one_error_line(code, err)
    code, _, err = ingest(run_cli, tmp_path / "ds", tmp_path / "raw.json", "--spacing-range", "0.01,20")
    assert code == 0, err


@pytest.mark.parametrize("value", ["0,1", "2,1", "a,b", "1", "nan,2", "1,inf"])
def test_bad_spacing_range_is_one_line(tmp_path, run_cli, value):
    make_case(tmp_path / "ds", "c1")
    code, _, err = ingest(run_cli, tmp_path / "ds", tmp_path / "raw.json", "--spacing-range", value)
    assert one_error_line(code, err).startswith(f"error: --spacing-range: {value!r} is not a range of voxel sizes")


def test_unknown_files_are_ignored_and_listed_in_the_warnings(tmp_path, run_cli):
    case = make_case(tmp_path / "ds", "c1")
    shutil.copy(case / "c1_t1.nii.gz", case / "c1_t1_brainmask.nii.gz")
    shutil.copy(case / "c1_t1.nii.gz", case / "c1_atlas.nii.gz")
    code, _, err = ingest(run_cli, tmp_path / "ds", tmp_path / "raw.json")
    assert code == 0, err
    entry = json.loads((tmp_path / "raw.json").read_text())["cases"][0]
    assert entry["seg"]["path"] == "c1/c1_seg.nii.gz" and entry["images"]["t1"]["path"] == "c1/c1_t1.nii.gz"
    assert [w.split(":")[0] for w in entry["warnings"]] == ["c1_atlas.nii.gz", "c1_t1_brainmask.nii.gz"]


def test_broken_symlink_in_the_source_is_one_line(tmp_path, run_cli):
    make_case(tmp_path / "ds", "c1")
    (tmp_path / "ds" / "c2").symlink_to(tmp_path / "gone", target_is_directory=True)
    code, _, err = ingest(run_cli, tmp_path / "ds", tmp_path / "raw.json")
    assert one_error_line(code, err).startswith(f"error: {tmp_path / 'ds' / 'c2'}: is a broken or looping symlink")


@pytest.mark.parametrize("image", ["../elsewhere/x.nii.gz", "/etc/passwd"])
def test_msd_image_path_leaving_the_dataset_is_one_line(tmp_path, run_cli, image):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "dataset.json").write_text(json.dumps({"modality": {"0": "T1"}, "training": [{"image": image}]}))
    code, _, err = ingest(run_cli, ds, tmp_path / "raw.json", "--layout", "msd")
    line = one_error_line(code, err)
    assert line.startswith(f"error: {ds / 'dataset.json'}: training/0/image: ") and image in line


def test_nnunet_without_channel_names_is_one_line(tmp_path, run_cli):
    ds = tmp_path / "ds"
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "dataset.json").write_text(json.dumps({"labels": {"background": 0}, "file_ending": ".nii.gz"}))
    code, _, err = ingest(run_cli, ds, tmp_path / "raw.json", "--layout", "nnunet")
    assert one_error_line(code, err).startswith(f"error: {ds / 'dataset.json'}: channel_names: missing")
