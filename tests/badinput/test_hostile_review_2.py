"""Regressions from a second hostile review (2026-12-07): an output that could replace a label map or a
run's checkpoint, and flag or file values that ended in a traceback instead of one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.badinput.builders import snapshot
from tests.badinput.hostile_builders import call, must, one_error_line, untouched
from tests.run_fixtures import make_tiny_run


def test_predict_case_out_cannot_replace_the_case_label_map(tmp_path, run_cli):
    """find_case_dir returns only the four images, so the truth beside them was not an input before."""
    must("synth", "--out", tmp_path / "src", "--cases", 1, "--seed", 0, "--shape", "24,20,16")
    case = next(p for p in (tmp_path / "src").iterdir() if p.is_dir())
    truth = case / f"{case.name}_seg.nii.gz"
    assert truth.is_file()
    before = snapshot(case)
    run = make_tiny_run(tmp_path / "run")
    code, _, err = call(run_cli, "predict", "--model", run, "--case", case, "--out", truth, "--threads", 1)
    one_error_line(code, err, str(truth))
    untouched(before, case)


def test_predict_with_a_checkpoint_file_protects_every_file_of_its_run(tmp_path, run_cli):
    """--model RUN/checkpoints/best.pt stands for the whole run, as --model RUN does: a mask written
    over a file the user keeps in the run folder would lose it."""
    must("synth", "--out", tmp_path / "src", "--cases", 1, "--seed", 0, "--shape", "24,20,16")
    case = next(p for p in (tmp_path / "src").iterdir() if p.is_dir())
    run = make_tiny_run(tmp_path / "run")
    kept = run / "reference_mask.nii.gz"
    kept.write_bytes(b"a file the user keeps beside the run")
    before = snapshot(run)
    code, _, err = call(run_cli, "predict", "--model", run / "checkpoints" / "best.pt", "--case", case,
                        "--out", kept, "--threads", 1)
    one_error_line(code, err, str(kept))
    untouched(before, run)


def _fake_2d_run(run: Path) -> Path:
    (run / "checkpoints").mkdir(parents=True)
    for name in ("best.pt", "latest.pt", "previous.pt"):
        (run / "checkpoints" / name).write_bytes(b"checkpoint " + name.encode())
    (run / "run.json").write_text('{"status": "finished"}')
    (run / "config.yaml").write_text("task: 2d\n")
    return run


@pytest.mark.parametrize("given", ["RUN", "RUN/checkpoints/best.pt"])
@pytest.mark.parametrize("target", ["checkpoints/latest.pt", "checkpoints/previous.pt", "run.json", "config.yaml"])
def test_quantize_out_cannot_replace_a_file_of_the_model_run(tmp_path, run_cli, given, target):
    """A resume falls back from latest.pt to previous.pt; run.json and config.yaml say what the run is."""
    run = _fake_2d_run(tmp_path / "run")
    (tmp_path / "data").mkdir()
    model = run if given == "RUN" else run / "checkpoints" / "best.pt"
    before = snapshot(run)
    code, _, err = call(run_cli, "quantize", "--model", model, "--data", tmp_path / "data", "--out", run / target)
    one_error_line(code, err, str(run / target))
    untouched(before, run)


@pytest.mark.parametrize("argv, flag", [
    (["demo", "--minutes", "1e308"], "--minutes"),  # finite, but 60 x 1e308 is inf (an OverflowError before)
    (["demo", "--minutes", "1e9"], "--minutes"),
    (["quantize", "--model", "m", "--data", "d", "--out", "o.pt", "--threads", "100000"], "--threads"),
    (["evaluate2d", "--model", "m", "--data", "d", "--out", "o", "--threads", "100000"], "--threads"),
    (["predict2d", "--model", "m", "--images", "i", "--out", "o", "--threads", "0"], "--threads"),
    (["bench", "infer", "--model", "m", "--case", "c", "--threads", "5000"], "--threads"),
])
def test_counts_and_budgets_out_of_range_are_one_line(tmp_path, run_cli, monkeypatch, argv, flag):
    monkeypatch.chdir(tmp_path)
    code, _, err = call(run_cli, *argv)
    line = one_error_line(code, err, flag)
    assert "expected" in line, line
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())  # nothing written, nothing started


@pytest.mark.parametrize("value", ["2024-01-15", "!!binary aGVsbG8=", ".nan"])
def test_a_2d_data_yaml_with_a_value_json_cannot_hold_is_one_line(tmp_path, run_cli, value):
    """YAML's own types (a date, bytes) reached json.dumps; now the file and the key are named."""
    (tmp_path / "camvid").mkdir()
    data = tmp_path / "data.yaml"
    data.write_text(f"root: camvid\nval_split: {value}\n")
    config = Path(__file__).resolve().parents[2] / "pipelines" / "train" / "camvid_deeplabv3plus.yaml"
    code, _, err = call(run_cli, "train", "--config", config, "--data", data, "--out", tmp_path / "run")
    line = one_error_line(code, err, str(data))
    assert "val_split" in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("stamp", ["[]", "null", "3"])
def test_a_pipeline_stamp_that_is_not_an_object_reruns_its_stage(tmp_path, stamp):
    from brats_seg.pipeline.runner import _current

    path = tmp_path / "01-ingest.json"
    path.write_text(stamp)
    assert _current(path, {"params": {}, "inputs": {}}, []) is False


@pytest.mark.parametrize("text", ["[]", "null"])
def test_doctor_names_a_run_json_that_is_not_an_object(tmp_path, text):
    from brats_seg.doctor import check_run

    (tmp_path / "run.json").write_text(text)
    lines: list = []
    problems = check_run(tmp_path, lines)
    assert any("run.json" in p and "not an object" in p for p in problems), problems
