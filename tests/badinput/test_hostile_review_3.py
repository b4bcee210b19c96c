"""Regressions from a third hostile review (2026-12-08): names and values that gave a surprise result
instead of one line."""
from __future__ import annotations

import pytest

from tests.badinput.hostile_builders import call, must, one_error_line


@pytest.mark.parametrize("name", ["mask.nrrd", "mask.mha", "run.json", "mask.gz"])
def test_predict_out_naming_another_file_type_is_one_line(tmp_path, run_cli, name):
    """Only .nii/.nii.gz names are files; any other name was taken as a folder, so `--out mask.nrrd`
    made a folder called mask.nrrd holding a NIfTI mask, with exit 0."""
    from tests.run_fixtures import make_tiny_run

    must("synth", "--out", tmp_path / "src", "--cases", 1, "--seed", 0, "--shape", "24,20,16")
    case = next(p for p in (tmp_path / "src").iterdir() if p.is_dir())
    run = make_tiny_run(tmp_path / "run")
    out = tmp_path / name
    code, _, err = call(run_cli, "predict", "--model", run, "--case", case, "--out", out, "--threads", 1)
    one_error_line(code, err, str(out))
    assert not out.exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1.5])
def test_evaluate_a_prediction_with_nan_inf_or_fractions_is_one_line(tmp_path, run_cli, bad):
    """The prediction skipped the integer check the truth gets: NaN ended in a ValueError traceback,
    and 1.5 was reported as label 1."""
    import nibabel as nib
    import numpy as np

    must("synth", "--out", tmp_path / "src", "--cases", 1, "--seed", 0, "--shape", "24,20,16")
    must("ingest", tmp_path / "src", "--out", tmp_path / "raw.json", "--workers", 1)
    case = next(p for p in (tmp_path / "src").iterdir() if p.is_dir())
    truth = nib.load(case / f"{case.name}_seg.nii.gz")
    data = np.asarray(truth.dataobj).astype(np.float32)
    data[0, 0, 0] = bad
    (tmp_path / "pred").mkdir()
    pred = tmp_path / "pred" / f"{case.name}.nii.gz"
    nib.save(nib.Nifti1Image(data, truth.affine), pred)
    code, _, err = call(run_cli, "evaluate", "--pred", tmp_path / "pred", "--truth", tmp_path / "raw.json",
                        "--out", tmp_path / "eval")
    assert "non-integer" in one_error_line(code, err, str(pred))


def test_synth_refuses_a_case_count_that_would_run_for_days(tmp_path, run_cli):
    code, _, err = call(run_cli, "synth", "--out", tmp_path / "src", "--cases", 1_000_000_000)
    one_error_line(code, err, "--cases")
    assert not (tmp_path / "src").exists()


def test_a_pipeline_stage_out_given_as_a_list_is_one_line(tmp_path, run_cli):
    spec = tmp_path / "p.yaml"
    spec.write_text("workdir: wd\nstages:\n  - stage: synth\n    out: [a, b]\n    cases: 1\n    shape: [16, 16, 16]\n")
    code, _, err = call(run_cli, "run", spec)
    assert "expected one path" in one_error_line(code, err, "out")
    assert not (tmp_path / "wd" / "a").exists()
