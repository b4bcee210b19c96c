"""A fifo or a device given where a file is expected is refused in one line, before it is opened.

Opening a fifo for reading blocks until a writer comes, so a command that read one would hang for
ever; /dev/zero would be read without end. Each command runs in its own process with a time limit,
so a regression shows as a kill, not as a hung test session.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.badinput.hostile_builders import must, run_bounded

NOT_REGULAR = "is not a regular file (a fifo, socket or device)"


@pytest.fixture()
def fifo(tmp_path) -> Path:
    path = tmp_path / "given.json"
    os.mkfifo(path)
    return path


def _refused(result: dict, name: str) -> None:
    assert result["killed"] is None, f"{result['killed']}: {result['err'][-500:]}"
    lines = result["err"].strip().splitlines()
    assert result["code"] == 2 and len(lines) == 1, result["err"][-1500:]
    assert name in lines[0] and NOT_REGULAR in lines[0], lines[0]


@pytest.mark.parametrize("command", ["preprocess", "split", "bench-merge"])
def test_a_fifo_given_as_a_manifest_is_refused_not_read(tmp_path, fifo, command):
    argv = {"preprocess": ["preprocess", fifo, "--out", tmp_path / "out"],
            "split": ["split", fifo, "--out", tmp_path / "out"],
            "bench-merge": ["bench", "merge", fifo, "--out", tmp_path / "learn.json"]}[command]
    _refused(run_bounded(argv, cwd=tmp_path, timeout=60), str(fifo))
    assert not (tmp_path / "out").exists() and not (tmp_path / "learn.json").exists()


@pytest.mark.parametrize("config", ["fifo", "/dev/zero"])
def test_a_fifo_or_device_given_as_a_config_is_refused_not_read(tmp_path, fifo, config):
    path = fifo.with_suffix(".yaml") if config == "fifo" else Path(config)
    if config == "fifo":
        os.mkfifo(path)
    argv = ["train", "--config", path, "--data", tmp_path / "none.json", "--out", tmp_path / "run"]
    _refused(run_bounded(argv, cwd=tmp_path, timeout=60), str(path))
    assert not (tmp_path / "run").exists()


def test_a_fifo_in_place_of_a_modality_is_refused_at_ingest(tmp_path):
    must("synth", "--out", tmp_path / "src", "--cases", 1, "--seed", 0, "--shape", "24,20,16")
    case = next(p for p in (tmp_path / "src").iterdir() if p.is_dir())
    t1 = case / f"{case.name}_t1.nii.gz"
    t1.unlink()
    os.mkfifo(t1)
    result = run_bounded(["ingest", tmp_path / "src", "--out", tmp_path / "raw.json", "--workers", 1],
                         cwd=tmp_path, timeout=60)
    assert result["killed"] is None, result["err"][-500:]
    assert result["code"] == 2 and "Traceback" not in result["err"], result["err"][-1500:]
    assert str(t1) in result["err"] and NOT_REGULAR in result["err"], result["err"][-1500:]


def test_a_fifo_given_as_a_model_is_refused_not_read(tmp_path, fifo):
    model = fifo.with_suffix(".pt")
    os.mkfifo(model)
    (tmp_path / "case").mkdir()
    argv = ["predict", "--model", model, "--case", tmp_path / "case", "--out", tmp_path / "out"]
    _refused(run_bounded(argv, cwd=tmp_path, timeout=60), str(model))
