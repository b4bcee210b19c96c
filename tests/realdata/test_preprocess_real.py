"""Two real BraTS 2018 cases through ingest + preprocess (native spacing): z-scored brain voxels per
channel, and the exact inverse of the label map. Reads ../shared/datasets in place, copies nothing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brats_seg.io.labels import from_canonical, to_canonical
from brats_seg.preprocess.inverse import labels_to_original
from tests.preprocess_fixtures import (CHANNELS, ingest_to, load_json, load_volume, native_voxel_map, raw_case_files,
                                       run_cli, summary_counts)

pytestmark = pytest.mark.realdata

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"
BRATS = DATASETS / "brats2018_deepbrainseg"
CASES = ("Brats18_2013_20_1", "Brats18_CBICA_ALU_1")  # two institutions


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> dict:
    missing = [c for c in CASES if not (BRATS / c).is_dir()]
    if missing:
        pytest.skip(f"real BraTS cases not available: {[str(BRATS / c) for c in missing]} absent")
    root = tmp_path_factory.mktemp("pp_real")
    # each case folder is its own ingest source (a dataset root), so only these two are read;
    # the raw manifest's roots point back into ../shared/datasets, nothing is copied or linked
    ingest_to([BRATS / c for c in CASES], root / "raw.json")
    # the roots lie outside raw.json's folder: reading them needs --data-root
    code, _, err = run_cli("preprocess", root / "raw.json", "--out", root / "out", "--workers", "2", "--data-root", BRATS)
    assert code == 0 and summary_counts(err) == (2, 0, 0), err
    entries = {e["id"]: e for e in load_json(root / "out" / "preprocessed.json")["cases"]}
    assert sorted(entries) == sorted(CASES)
    return {"raw": root / "raw.json", "out": root / "out", "entries": entries}


@pytest.mark.parametrize("case_id", CASES)
def test_real_brain_voxels_are_z_scored_per_channel(real_run, case_id):
    entry = real_run["entries"][case_id]
    files = raw_case_files(real_run["raw"], (BRATS,))[case_id]
    image = np.load(real_run["out"] / entry["image"], mmap_mode="r")
    q = None
    for c, name in enumerate(CHANNELS):
        original, affine = load_volume(files[name])
        q = native_voxel_map(entry, affine) if q is None else q
        brain = original[q] != 0  # this channel's brain voxels, located through the affines
        assert brain.sum() == np.count_nonzero(original)  # the crop kept every brain voxel
        values = np.asarray(image[..., c])
        z = values[brain].astype(np.float64)
        assert abs(z.mean()) < 0.01, f"{case_id} {name}: brain mean {z.mean()}"
        assert abs(z.std() - 1) < 0.01, f"{case_id} {name}: brain std {z.std()}"
        assert not values[~brain].any(), f"{case_id} {name}: background is not exactly 0"


@pytest.mark.parametrize("case_id", CASES)
def test_real_native_label_round_trip_is_exact(real_run, case_id):
    entry = real_run["entries"][case_id]
    files = raw_case_files(real_run["raw"], (BRATS,))[case_id]
    seg, affine = load_volume(files["seg"])
    assert files["convention"] == "brats2021"
    stored = np.load(real_run["out"] / entry["seg"])
    np.testing.assert_array_equal(stored, to_canonical(seg[native_voxel_map(entry, affine)], "brats2021"))
    back = from_canonical(labels_to_original(stored, entry), "brats2021")
    assert back.shape == seg.shape == (240, 240, 155) and back.dtype == np.uint8
    np.testing.assert_array_equal(back, seg)
    assert set(np.unique(back)) <= {0, 1, 2, 4}
