"""Hostile inputs to the new predict/ingest/train/bench options: each one line `error: ...`, exit 2,
nothing written over an input or another output (regressions of bugs found by attacking them)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_case, phantom
from tests.unit.test_dicom import series_uid, write_series

CHANNELS = ("t1", "t1ce", "t2", "flair")
SHAPE = (16, 16, 12)


def _one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from tests.run_fixtures import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture
def dicom_case(tmp_path) -> Path:
    """case/{t1,t1ce,t2,flair}/ DICOM series folders."""
    case = tmp_path / "case"
    for i, channel in enumerate(CHANNELS):
        write_series(case / channel, phantom(SHAPE, 0, i), uid=series_uid(40 + i), description=channel)
    return case


def _dicom_flags(case: Path) -> list[str]:
    return [a for c in CHANNELS for a in (f"--{c}", str(case / c))]


def test_predict_out_on_a_dicom_slice_is_refused(run_cli, tiny_run, dicom_case):
    slice_file = dicom_case / "t1" / "IM0000.dcm"
    before = slice_file.read_bytes()
    code, _, err = run_cli("predict", "--model", tiny_run, *_dicom_flags(dicom_case), "--out", slice_file,
                           "--threads", 1)
    _one_line_error(code, err, "--out", "inputs")
    assert slice_file.read_bytes() == before


def test_uncertainty_path_equal_to_the_mask_is_refused(run_cli, tiny_run, tmp_path):
    case = make_case(tmp_path / "src", "C1", shape=SHAPE, seg=False)
    files = [a for c in CHANNELS for a in (f"--{c}", case / f"C1_{c}.nii.gz")]
    mask = tmp_path / "out" / "m.nii.gz"
    code, _, err = run_cli("predict", "--model", tiny_run, *files, "--tta", "--tta-axes", "0",
                           "--uncertainty", mask, "--out", mask, "--threads", 1)
    _one_line_error(code, err, "--uncertainty", "mask")
    assert not mask.exists()
    prob = tmp_path / "out" / "m_probabilities.nii.gz"
    code, _, err = run_cli("predict", "--model", tiny_run, *files, "--tta", "--tta-axes", "0", "--probabilities",
                           "--uncertainty", prob, "--out", mask, "--threads", 1)
    _one_line_error(code, err, "--uncertainty", "probabilities")
    assert not prob.exists()
    code, _, err = run_cli("predict", "--model", tiny_run, *files, "--tta", "--tta-axes", "0",
                           "--uncertainty", case / "C1_t1.nii.gz", "--out", mask, "--threads", 1)
    _one_line_error(code, err, "--uncertainty is one of the command's inputs")


def test_predict_manifest_out_that_is_a_file_is_refused(run_cli, tmp_path):
    (tmp_path / "raw.json").write_text("{}")
    out = tmp_path / "volumes.csv"
    out.write_text("id\n")
    code, _, err = run_cli("predict", "--model", tmp_path / "run", "--manifest", tmp_path / "raw.json", "--out", out)
    _one_line_error(code, err, "volumes.csv", "--out is a file")
    assert out.read_text() == "id\n"


def test_ingest_out_on_a_dicom_slice_is_refused(run_cli, dicom_case):
    slice_file = dicom_case / "t2" / "IM0003.dcm"
    before = slice_file.read_bytes()
    code, _, err = run_cli("ingest", dicom_case.parent, "--out", slice_file)
    _one_line_error(code, err, "--out is one of the command's inputs")
    assert slice_file.read_bytes() == before


def test_ingest_folder_of_two_series_names_no_flag_ingest_lacks(run_cli, dicom_case, tmp_path):
    write_series(dicom_case / "t2", phantom(SHAPE, 1, 2), uid=series_uid(60), description="t2 again", name="B")
    code, _, err = run_cli("ingest", dicom_case.parent, "--out", tmp_path / "raw.json")
    _one_line_error(code, err, "holds 2 DICOM series", "move the others out")
    assert "pick one with --series" not in err
    assert not (tmp_path / "raw.json").exists()


def test_train_out_that_is_a_file_is_refused(run_cli, tmp_path):
    out = tmp_path / "run.txt"
    out.write_text("notes\n")
    code, _, err = run_cli("train", "--data", tmp_path / "pre.json", "--out", out, "--auto-resume")
    _one_line_error(code, err, "--out is a file")
    assert out.read_text() == "notes\n"


@pytest.fixture
def raw_manifest(run_cli, tmp_path) -> Path:
    for i in range(3):
        make_case(tmp_path / "src", f"C{i}", shape=SHAPE, seed=i)
    code, _, err = run_cli("ingest", tmp_path / "src", "--out", tmp_path / "raw.json")
    assert code == 0, err
    return tmp_path / "raw.json"


@pytest.mark.parametrize("flags, needles", [
    (["--et-grid", ""], ["--et-grid"]),
    (["--predict-args=--overlap nan"], ["--predict-args", "--overlap"]),
    (["--predict-args=--uncertainty"], ["--predict-args", "needs --tta"]),
    (["--predict-args=--missing t1,t1ce,t2,flair"], ["--predict-args", "--missing"]),
])
def test_bench_learn_bad_options_fail_before_anything_runs(run_cli, raw_manifest, tmp_path, flags, needles):
    out = tmp_path / "study"
    code, _, err = run_cli("bench", "learn", "--data", raw_manifest, "--folds", 2, "--steps", 1, "--out", out, *flags)
    _one_line_error(code, err, *needles)
    assert not out.exists()


def test_bench_gpu_out_that_is_a_folder_is_refused(run_cli, tmp_path):
    code, _, err = run_cli("bench", "gpu", "--out", tmp_path)
    _one_line_error(code, err, "--out is a folder")
    assert list(tmp_path.iterdir()) == []
