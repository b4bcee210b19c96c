"""predict --missing: a model trained a few steps with modality dropout predicts without FLAIR (its
file never read), on the reference grid, with the missing channel fed as zeros; a model trained
without dropout, unknown names, every channel missing and a missing channel also given are refused."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_seg.infer.missing import fill_missing, reference_channel
from brats_seg.infer.model_spec import ModelSpec
from brats_seg.infer.segmenter import Segmenter
from brats_seg.seg3d.config import load_config
from brats_seg.seg3d.trainer import train_3d
from tests.conftest import make_case
from tests.run_fixtures import make_tiny_run
from tests.train_fixtures import TINY, make_dataset

torch.set_num_threads(1)
CHANNELS = ("t1", "t1ce", "t2", "flair")


@pytest.fixture(scope="module")
def dropout_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("md")
    data = make_dataset(root / "data", n_cases=2, shape=(20, 20, 20))
    cfg = load_config(None, [*TINY, "augment.modality_dropout=0.5", "train.max_steps=3", "train.steps_per_epoch=3",
                             "data.fold=-1"])
    assert train_3d(cfg, data, root / "run", False) == 0
    return root / "run"


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    return make_case(tmp_path_factory.mktemp("case"), "case0", shape=(22, 20, 18), seed=1)


def _file(case_dir: Path, channel: str) -> Path:
    return case_dir / f"{case_dir.name}_{channel}.nii.gz"


def test_trained_with_dropout_predicts_without_flair(dropout_run, case, tmp_path, run_cli):
    files = [a for c in ("t1", "t1ce", "t2") for a in (f"--{c}", _file(case, c))]
    out = tmp_path / "m.nii.gz"
    code, _, err = run_cli("predict", "--model", dropout_run, *files, "--missing", "flair", "--out", out)
    assert code == 0, err
    mask, ref = nib.load(str(out)), nib.load(str(_file(case, "t1ce")))
    assert mask.shape == ref.shape and np.allclose(mask.affine, ref.affine)
    assert mask.get_data_dtype() == np.uint8
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["missing_channels"] == ["flair"] and report["mask"] == "m.nii.gz"


def test_case_folder_does_not_read_the_missing_file(dropout_run, case, tmp_path, run_cli):
    broken = tmp_path / "case0"
    broken.mkdir()
    for c in ("t1", "t1ce", "t2", "seg"):
        (broken / _file(case, c).name).write_bytes(_file(case, c).read_bytes())
    _file(broken, "flair").write_bytes(b"not a NIfTI")  # would be an error if it were read
    code, _, err = run_cli("predict", "--model", dropout_run, "--case", broken, "--missing", "flair",
                           "--out", tmp_path / "out")
    assert code == 0, err
    assert nib.load(str(tmp_path / "out" / "case0.nii.gz")).shape == (22, 20, 18)
    code, _, err = run_cli("predict", "--model", dropout_run, "--case", broken, "--out", tmp_path / "all")
    assert code == 2 and "case0_flair" in err  # the control: read, the broken file is refused


class Recorder(torch.nn.Module):
    """Records the windows it sees; logits from channel 1 only (so the output ignores flair)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return x[:, 1:2].repeat(1, 3, 1, 1, 1) - 1.0


def test_the_network_sees_zeros_for_the_missing_channel(case):
    spec = ModelSpec("regions", CHANNELS, (16, 16, 16), modality_dropout=0.25)
    full, part = Recorder(), Recorder()
    a = Segmenter(full, spec).predict(case)
    b = Segmenter(part, spec, missing=("t2f",)).predict(case)  # BraTS 2023 name of flair
    assert b.missing == ("flair",) and a.geometry.shape == b.geometry.shape
    for x, y in zip(full.seen, part.seen, strict=True):
        assert not y[:, 3].any() and x[:, 3].any()  # flair: zeros, exactly as modality dropout trains
        torch.testing.assert_close(x[:, :3], y[:, :3])  # the present channels: unchanged
    np.testing.assert_array_equal(a.labels, b.labels)


def test_fill_and_reference_channel():
    image = np.arange(2 * 3, dtype=np.float32).reshape(2, 3, 1, 1) + 1
    out = fill_missing(image, ["t1", "t2"], list(CHANNELS))
    assert out.shape == (4, 3, 1, 1) and not out[1].any() and not out[3].any()
    np.testing.assert_array_equal(out[[0, 2]], image)
    assert reference_channel(CHANNELS) == "t1ce" and reference_channel(CHANNELS, ("t1ce",)) == "t1"
    assert reference_channel(CHANNELS, ("t1", "t1ce")) == "t2"


@pytest.mark.parametrize("extra, needle", [
    (["--missing", "flair"], "augment.modality_dropout"),  # a model trained without dropout
])
def test_model_without_dropout_refuses(tmp_path, case, run_cli, extra, needle):
    run = make_tiny_run(tmp_path / "run")
    code, out, err = run_cli("predict", "--model", run, "--case", case, "--out", tmp_path / "o", *extra)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --missing") and needle in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("missing, with_file, needle", [
    ("dwi", False, "'dwi' is not a channel"),
    ("t1,t1ce,t2,flair", False, "leaves no image"),
    ("flair,flair", False, "twice"),
    ("flair", True, "--flair"),
])
def test_bad_missing_is_one_line(dropout_run, case, tmp_path, run_cli, missing, with_file, needle):
    channels = ("t1", "t1ce", "t2", "flair") if with_file else ("t1", "t1ce", "t2")
    files = [a for c in channels for a in (f"--{c}", _file(case, c))]
    code, _, err = run_cli("predict", "--model", dropout_run, *files, "--missing", missing, "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --missing") and needle in err, err
    assert not (tmp_path / "o").exists()


def test_batch_with_missing(dropout_run, case, tmp_path, run_cli):
    from brats_seg.ingest.stage import ingest

    ingest([case.parent], tmp_path / "raw.json")
    code, _, err = run_cli("predict", "--model", dropout_run, "--manifest", tmp_path / "raw.json",
                           "--missing", "flair", "--out", tmp_path / "pred", "--data-root", case.parent)
    assert code == 0, err
    manifest = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert manifest["config"]["settings"]["missing"] == ["flair"]
    assert set(manifest["cases"][0]["inputs_sha256"]) == {"t1", "t1ce", "t2"}
