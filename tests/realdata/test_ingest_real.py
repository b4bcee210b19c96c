"""Ingestion on the real datasets in ../shared/datasets (skipped with a reason when absent)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from brats_seg.io.geometry import LPS_TO_RAS
from brats_seg.io.volume import read_volume

pytestmark = pytest.mark.realdata

BRATS18_CASES = 12
BRATS_AFFINE = [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 239.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]


def test_brats2018_cases_ingest_with_correct_geometry(shared_datasets, tmp_path, run_cli):
    src = shared_datasets / "brats2018_deepbrainseg"
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    case_dirs = sorted(p.name for p in src.iterdir() if p.is_dir())
    assert len(case_dirs) == BRATS18_CASES
    out = tmp_path / "raw.json"
    code, _, err = run_cli("ingest", src, "--out", out, "--workers", "2")
    assert code == 0, err
    manifest = json.loads(out.read_text())
    assert manifest["rejected"] == []
    cases = {c["id"]: c for c in manifest["cases"]}
    assert sorted(cases) == case_dirs
    for cid, case in cases.items():
        assert case["layout"] == "brats2021"
        assert case["label_convention"] == "brats2021"
        assert list(case["images"]) == ["t1", "t1ce", "t2", "flair"]
        files = dict(case["images"], seg=case["seg"])
        for name, rec in files.items():
            suffix = name
            assert rec["path"] == f"{cid}/{cid}_{suffix}.nii.gz"
            assert rec["shape"] == [240, 240, 155], (cid, name)
            assert rec["spacing"] == [1.0, 1.0, 1.0], (cid, name)
            assert rec["orientation"] == "LPS", (cid, name)
            assert rec["affine"] == BRATS_AFFINE, (cid, name)
            assert re.fullmatch(r"[0-9a-f]{64}", rec["sha256"])
        assert not any("empty" in w for w in case["warnings"]), (cid, case["warnings"])
    # the manifest's paths lead back to the files
    root = (out.parent / manifest["roots"][0]).resolve()
    assert root == src.resolve()


def test_brats2015_case_is_rejected_naming_the_missing_modalities(shared_datasets, tmp_path, run_cli):
    src = shared_datasets / "brats2015_deepmedic"
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    out = tmp_path / "raw.json"
    code, _, err = run_cli("ingest", src, "--out", out)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    line = lines[0]
    assert line.startswith("error: brats_2013_pat0006_1: missing modality files: ")
    missing = line.split("missing modality files: ", 1)[1].split(" (", 1)[0]
    assert re.split(r",\s*", missing) == ["t1", "t2"]
    assert not out.exists()


def test_tcga_nrrd_reads_with_the_geometry_simpleitk_reports(shared_datasets):
    import SimpleITK as sitk

    path = shared_datasets / "tcga_gbm_pyradiomics" / "brain1_image.nrrd"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    data, geom = read_volume(path)
    img = sitk.ReadImage(str(path))
    assert data.shape == (256, 256, 25) == geom.shape == img.GetSize()
    np.testing.assert_allclose(geom.spacing, img.GetSpacing(), rtol=1e-9)
    np.testing.assert_allclose(geom.spacing, (0.78125, 0.78125, 6.5), rtol=1e-6)
    flip = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(geom.origin, flip @ np.asarray(img.GetOrigin()), atol=1e-6)
    np.testing.assert_allclose(geom.origin, (99.61, -99.61, -78.0), atol=0.01)
    np.testing.assert_allclose(geom.direction, flip @ np.asarray(img.GetDirection()).reshape(3, 3), atol=1e-9)
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    np.testing.assert_allclose(geom.affine_array, LPS_TO_RAS @ lps, atol=1e-9)
    # same voxels in the same (x, y, z) order
    np.testing.assert_array_equal(data, sitk.GetArrayFromImage(img).transpose(2, 1, 0))
    assert int(data.min()) == 0 and int(data.max()) == 3057
    idx = (200, 31, 12)
    world_lps = np.asarray(img.TransformIndexToPhysicalPoint(idx))
    np.testing.assert_allclose((geom.affine_array @ np.array([*idx, 1.0]))[:3], flip @ world_lps, atol=1e-6)


def test_tcga_label_shares_the_image_grid(shared_datasets):
    folder = shared_datasets / "tcga_gbm_pyradiomics"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    from brats_seg.io.geometry import same_grid

    image, g_img = read_volume(folder / "brain1_image.nrrd")
    label, g_lab = read_volume(folder / "brain1_label.nrrd")
    assert same_grid(g_img, g_lab) is None
    values, counts = np.unique(label, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == {0: 1634263, 1: 4137}
