"""`predict --spacing`: the network run on another grid than its run's, the window scaled to the same
physical extent, the mask still on the input's exact grid; refused for native-spacing runs and bad values."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_seg.errors import InputError
from brats_seg.infer.model_spec import ModelSpec, respaced
from brats_seg.infer.segmenter import Segmenter
from brats_seg.ingest.stage import ingest
from brats_seg.io.manifest import case_root
from tests.run_fixtures import make_tiny_run

torch.set_num_threads(1)


def _spec(spacing) -> ModelSpec:
    return ModelSpec("regions", ("t1", "t1ce", "t2", "flair"), (64, 64, 64), spacing)


def test_window_keeps_the_physical_extent_rounded_to_the_network_multiple():
    assert respaced(_spec((2.0, 2.0, 2.0)), (1.0, 1.0, 1.0), 8).patch_size == (128, 128, 128)
    assert respaced(_spec((2.0, 2.0, 2.0)), (1.5, 1.5, 1.5), 8).patch_size == (88, 88, 88)  # 85.3 -> 88
    assert respaced(_spec((2.0, 2.0, 2.0)), (1.0, 1.0, 4.0), 8).patch_size == (128, 128, 32)
    assert respaced(_spec((2.0, 2.0, 2.0)), (1.0, 1.0, 1.0), 8).spacing == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("patch,spacing,multiple,problem", [
    (64, (0.45, 2.0, 2.0), 8, "more than 4x finer or coarser"),
    (64, (2.0, 9.0, 2.0), 8, "more than 4x finer or coarser"),
    (16, (2.0, 2.0, 6.0), 4, "16x16x16 window to 16x16x4, below the 8 voxels a side.*at most 4 mm"),
])
def test_windows_far_from_the_trained_one_are_refused_before_any_allocation(patch, spacing, multiple, problem):
    """Finer than 4x would make a window of 64x the activations; coarser can leave a one-voxel
    bottleneck, where instance norm fails (a traceback, not a mask)."""
    spec = ModelSpec("regions", ("t1", "t1ce", "t2", "flair"), (patch,) * 3, (2.0, 2.0, 2.0))
    with pytest.raises(InputError, match=f"--spacing.*{problem}"):
        respaced(spec, spacing, multiple)


def test_a_window_past_max_voxels_is_one_line_before_anything_runs(tmp_path, case_and_run, run_cli):
    raw, run = case_and_run
    code, _, err = run_cli("predict", "--model", run, "--manifest", raw, "--out", tmp_path / "p", "--spacing", "0.5",
                           "--max-voxels", "100000")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "64x64x64" in err and "--max-voxels" in err, err
    assert not (tmp_path / "p").exists()


def test_a_native_spacing_run_has_no_voxel_size_to_scale_from():
    with pytest.raises(InputError, match="--spacing.*native"):
        respaced(_spec("native"), (1.0, 1.0, 1.0), 8)


@pytest.fixture(scope="module")
def case_and_run(tmp_path_factory) -> tuple[Path, Path]:
    from tests.conftest import make_case

    root = tmp_path_factory.mktemp("spacing")
    make_case(root / "src", "case0", shape=(24, 20, 18), seed=0)
    ingest([root / "src"], root / "raw.json")
    return root / "raw.json", make_tiny_run(root / "run", spacing=[2.0, 2.0, 2.0])


def test_predict_at_half_the_voxel_size_writes_the_mask_on_the_input_grid(tmp_path, case_and_run, run_cli):
    raw, run = case_and_run
    out = tmp_path / "pred"
    code, _, err = run_cli("predict", "--model", run, "--manifest", raw, "--out", out, "--threads", "1",
                           "--spacing", "1.0")
    assert code == 0, err
    manifest = json.loads(raw.read_text())
    entry = manifest["cases"][0]
    truth = nib.load(str(case_root(raw, manifest, entry) / entry["seg"]["path"]))
    mask = nib.load(str(next((out / "masks").glob("*.nii.gz"))))
    assert mask.shape == truth.shape and np.allclose(mask.affine, truth.affine)
    settings = json.loads((out / "predictions.json").read_text())["config"]["settings"]
    assert settings["spacing"] == [1.0, 1.0, 1.0] and settings["patch_size"] == [32, 32, 32]


def test_the_spacing_changes_what_the_network_sees(case_and_run):
    raw, run = case_and_run
    manifest = json.loads(raw.read_text())
    entry = manifest["cases"][0]
    root = case_root(raw, manifest, entry)
    at_run = Segmenter.from_run(run).predict(entry, root=root, probabilities=True)
    finer = Segmenter.from_run(run, spacing=(1.0, 1.0, 1.0)).predict(entry, root=root, probabilities=True)
    assert at_run.probabilities.shape == finer.probabilities.shape
    assert not np.allclose(at_run.probabilities, finer.probabilities)


@pytest.mark.parametrize("value,problem", [("native", "voxel size in mm"), ("0", "between 0.05 and 50"),
                                           ("1,2", "between 0.05 and 50"), ("nan", "between 0.05 and 50")])
def test_bad_spacing_values_are_one_line(tmp_path, case_and_run, run_cli, value, problem):
    raw, run = case_and_run
    code, _, err = run_cli("predict", "--model", run, "--manifest", raw, "--out", tmp_path / "p", "--spacing", value)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--spacing" in err and problem in err, err
    assert not (tmp_path / "p").exists()


def test_a_native_run_refuses_spacing_on_the_command_line(tmp_path, case_and_run, run_cli):
    raw, _ = case_and_run
    native = make_tiny_run(tmp_path / "native")
    code, _, err = run_cli("predict", "--model", native, "--manifest", raw, "--out", tmp_path / "p", "--spacing", "1")
    assert code == 2 and "--spacing" in err and "native" in err, err
