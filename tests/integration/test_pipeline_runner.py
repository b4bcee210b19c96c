"""`brats-seg run`: stages run in order, current ones are skipped, a change redoes what depends on it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from brats_seg.cli import main
from brats_seg.errors import InputError
from brats_seg.pipeline.runner import run_pipeline

PIPELINE = """
workdir: {workdir}
vars:
  spacing: native
stages:
  - stage: synth
    out: data
    cases: 3
    seed: 5
    shape: [32, 32, 24]
  - stage: ingest
    sources: [data]
    out: raw.json
  - stage: split
    raw: raw.json
    out: split
    test: 1
  - stage: preprocess
    raw: split/raw_train.json
    out: pp
    spacing: ${{spacing}}
    workers: 1
"""


@pytest.fixture()
def pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(PIPELINE.format(workdir=tmp_path / "work"))
    return path


def _ran(records: list[dict]) -> list[str]:
    return [r["stage"] for r in records if r["ran"]]


def test_first_run_runs_everything_then_nothing(pipeline: Path, tmp_path: Path):
    assert _ran(run_pipeline(pipeline)) == ["synth", "ingest", "split", "preprocess"]
    manifest = tmp_path / "work" / "pp" / "preprocessed.json"
    before = manifest.stat().st_mtime_ns
    assert _ran(run_pipeline(pipeline)) == []
    assert manifest.stat().st_mtime_ns == before
    test_ids = [c["id"] for c in json.loads((tmp_path / "work" / "split" / "raw_test.json").read_text())["cases"]]
    train_ids = [c["id"] for c in json.loads(manifest.read_text())["cases"]]
    assert len(test_ids) == 1 and len(train_ids) == 2 and not set(test_ids) & set(train_ids)


def test_a_changed_parameter_redoes_that_stage_only(pipeline: Path):
    run_pipeline(pipeline)
    assert _ran(run_pipeline(pipeline, variables={"spacing": "2.0"})) == ["preprocess"]


def test_a_changed_input_redoes_the_stages_downstream(tmp_path: Path):
    from brats_seg.synth.phantoms import synthesize_dataset

    synthesize_dataset(tmp_path / "data", 3, seed=5, shape=(32, 32, 24))
    path = tmp_path / "study.yaml"
    text = PIPELINE.format(workdir=tmp_path / "work").replace("    out: data\n", "    out: unused\n")
    path.write_text(text.replace("sources: [data]", f"sources: [{tmp_path / 'data'}]"))
    run_pipeline(path)
    import nibabel as nib
    import numpy as np

    flair = sorted((tmp_path / "data").rglob("*_flair.nii.gz"))[0]
    img = nib.load(flair)
    data = np.asanyarray(img.dataobj).copy()
    data[data > 0] += 1  # new content: the raw manifest's sha256 changes, so everything after it reruns
    nib.save(nib.Nifti1Image(data, img.affine, img.header), flair)
    assert _ran(run_pipeline(path)) == ["ingest", "split", "preprocess"]


def test_a_touched_but_identical_input_reruns_only_the_stage_that_reads_it(tmp_path: Path):
    from brats_seg.synth.phantoms import synthesize_dataset

    synthesize_dataset(tmp_path / "data", 3, seed=5, shape=(32, 32, 24))
    path = tmp_path / "study.yaml"
    text = PIPELINE.format(workdir=tmp_path / "work").replace("sources: [data]", f"sources: [{tmp_path / 'data'}]")
    path.write_text(text)
    run_pipeline(path)
    next((tmp_path / "data").rglob("*_seg.nii.gz")).touch()
    ran = _ran(run_pipeline(path))
    # ingest reruns (its source listing changed); what follows reruns only if raw.json's bytes changed
    assert ran[:1] == ["ingest"] and "synth" not in ran


def test_a_deleted_output_is_rebuilt(pipeline: Path, tmp_path: Path):
    run_pipeline(pipeline)
    (tmp_path / "work" / "pp" / "preprocessed.json").unlink()
    assert _ran(run_pipeline(pipeline)) == ["preprocess"]


def test_unset_variable_and_unknown_stage_are_input_errors(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - stage: synth\n    out: ${nowhere}\n")
    with pytest.raises(InputError, match="nowhere"):
        run_pipeline(bad, tmp_path / "w")
    bad.write_text("stages:\n  - stage: teleport\n    out: x\n")
    with pytest.raises(InputError, match="unknown stage 'teleport'"):
        run_pipeline(bad, tmp_path / "w")


def test_cli_reports_a_failing_stage_in_one_line(tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"stages:\n  - stage: ingest\n    sources: [{tmp_path / 'missing'}]\n    out: raw.json\n")
    assert main(["run", str(bad), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and "missing" in errors[0] and not any("Traceback" in line for line in err)


@pytest.mark.parametrize("option,value", [("min_component_fraction", 1.5), ("et_min_mm3", -1), ("overlap", 1.0)])
def test_a_bad_predict_value_fails_when_planned_before_any_stage_runs(tmp_path: Path, option, value):
    """A value only predict's own checks know is out of range stops the file before stage 0 (which
    here would train for minutes first)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - stage: synth\n    out: raw\n"
                   f"  - stage: predict\n    model: train\n    manifest: raw.json\n    out: pred\n    {option}: {value}\n")
    with pytest.raises(InputError, match=f"stages/1 \\(predict\\): --{option.replace('_', '-')}"):
        run_pipeline(bad, tmp_path / "w")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("code", [75, 130])
def test_a_stopped_train_stage_keeps_its_exit_code(pipeline: Path, monkeypatch, capsys, code: int):
    """A pre-empted (75) or Ctrl-C'd (130) training is not bad input (2): the pipeline exits with its code."""
    import brats_seg.commands.train as train_command

    monkeypatch.setattr(train_command, "run", lambda args: code)
    text = pipeline.read_text() + "  - stage: train\n    data: pp/preprocessed.json\n    out: train\n"
    pipeline.write_text(text)
    with pytest.raises(SystemExit) as stop:
        run_pipeline(pipeline)
    assert stop.value.code == code
    assert "stopped with exit" in capsys.readouterr().err
