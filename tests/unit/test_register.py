"""Co-registration on a small synthetic head (preprocess.register): predict --register writes the mask
on the t1ce's grid with the transforms and metrics in the case JSON, bounds and a worse metric are one
error line each, ingest --register writes registered cases that preprocess reads like any other."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from brats_seg.errors import InputError
from tests.unit.test_dicom import write_series

SPACING = (2.0, 2.0, 2.0)
SHAPE = (48, 56, 44)
ORIGIN = (-47.0, -55.0, -43.0)  # LPS; the grid is centred on 0


def head(seed: int, contrast: float):
    """A smooth head-like image in LPS (SimpleITK): an ellipsoid of blobs, a bright 'tumour' off centre."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    idx = np.indices(SHAPE, dtype=float).transpose(1, 2, 3, 0) * np.asarray(SPACING) + np.asarray(ORIGIN)
    inside = ((idx / np.array([38.0, 46.0, 34.0])) ** 2).sum(-1) <= 1.0
    image = np.zeros(SHAPE)
    for centre in rng.uniform(-25, 25, (12, 3)):
        image += rng.uniform(30, 80) * np.exp(-((idx - centre) ** 2).sum(-1) / (2 * 8.0 ** 2))
    image += contrast * 300 * np.exp(-((idx - [12.0, -10.0, 6.0]) ** 2).sum(-1) / (2 * 6.0 ** 2))
    image = np.where(inside, image + 100, 0.0).astype(np.float32)
    img = sitk.GetImageFromArray(np.ascontiguousarray(image.transpose(2, 1, 0)))
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    return img


def moved(img, degrees, shift, spacing=(2.2, 1.8, 2.5), size=(44, 62, 36)):
    """`img` moved by a known rigid transform K onto another grid: out(p) = img(K^-1 p); returns (out, K)."""
    import SimpleITK as sitk

    k = sitk.Euler3DTransform()
    k.SetRotation(*np.radians(degrees))
    k.SetTranslation(shift)
    grid = sitk.Image(list(size), sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetOrigin([-(n - 1) * s / 2 + 3.0 for n, s in zip(size, spacing)])
    return sitk.Clamp(sitk.Resample(img, grid, k.GetInverse(), sitk.sitkBSpline, 0.0), lowerBound=0.0), k


def write_case(folder: Path, degrees=(4.0, -3.0, 5.0), shift=(3.0, -2.0, 4.0)) -> dict[str, Path]:
    """t1 and t1ce on one grid (NIfTI), t2 moved (DICOM series), flair moved (NIfTI, another move)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, c in enumerate(("t1", "t1ce")):
        paths[c] = folder / f"P17_{c}.nii.gz"
        sitk.WriteImage(head(i, 0.3 + i), str(paths[c]))
    t2, _ = moved(head(2, 1.0), degrees, shift)
    paths["t2"] = write_series(folder / "P17_t2", np.round(sitk.GetArrayFromImage(t2).T), t2.GetSpacing(),
                               t2.GetOrigin(), description="T2 AX")
    flair, _ = moved(head(3, 1.5), tuple(-d for d in degrees), tuple(-s for s in shift))
    paths["flair"] = folder / "P17_flair.nii.gz"
    sitk.WriteImage(flair, str(paths["flair"]))
    return paths


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tests.run_fixtures import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("run") / "run")


def test_predict_register_writes_the_mask_on_the_t1ce_grid_and_the_transforms_in_the_case_json(tmp_path, run_cli, run):
    import nibabel as nib

    paths = write_case(tmp_path / "P17")
    files = [a for c, p in paths.items() for a in (f"--{c}", p)]
    code, _, err = run_cli("predict", "--model", run, *files, "--out", tmp_path / "a" / "m.nii.gz")
    assert code == 2 and "--register" in err  # different grids: refused, naming the option
    code, _, err = run_cli("predict", "--model", run, *files, "--out", tmp_path / "pred" / "m.nii.gz", "--register",
                           "--threads", "1")
    assert code == 0, err
    mask, t1ce = nib.load(str(tmp_path / "pred" / "m.nii.gz")), nib.load(str(paths["t1ce"]))
    assert mask.shape == t1ce.shape
    np.testing.assert_allclose(mask.affine, t1ce.affine, atol=1e-5)
    section = json.loads((tmp_path / "pred" / "m.json").read_text())["registration"]
    assert section["reference"] == "t1ce" and set(section["channels"]) == {"t1", "t2", "flair"}
    assert section["reference_path"] == "../P17/P17_t1ce.nii.gz"
    t2 = section["channels"]["t2"]
    assert np.asarray(t2["matrix_lps"]).shape == (4, 4) and t2["metric_after"] < t2["metric_before"]
    assert 4.0 < t2["rotation_deg"] < 10.0 and t2["shift_mm"] < 30.0
    m = np.asarray(t2["matrix_lps"])
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(np.asarray(t2["matrix_ras"]), flip @ m @ flip, atol=1e-6)


def test_the_recovered_transform_matches_the_known_one(tmp_path):
    from brats_seg.preprocess.register import RegisterConfig, register_pair, rotation_deg, transform_matrix

    fixed = head(2, 1.0)
    image, k = moved(head(2, 1.0), (4.0, -3.0, 5.0), (3.0, -2.0, 4.0))
    transform, record = register_pair(fixed, image, RegisterConfig(threads=1), "t2")
    residual = np.linalg.inv(transform_matrix(k)) @ transform_matrix(transform)
    corners = np.array([[x, y, z] for x in (-38, 38) for y in (-46, 46) for z in (-34, 34)], float)
    assert np.linalg.norm(corners @ residual[:3, :3].T + residual[:3, 3] - corners, axis=1).max() < 1.0
    assert rotation_deg(residual) < 1.0 and record["metric_after"] < record["metric_before"]


def test_a_move_beyond_the_bounds_is_one_error_line(tmp_path, run_cli, run):
    paths = write_case(tmp_path / "P17")
    files = [a for c, p in paths.items() for a in (f"--{c}", p)]
    for flags, text in ((["--register-max-rotation", "2"], "more than --register-max-rotation 2"),
                        (["--register-max-shift", "1"], "more than --register-max-shift 1")):
        code, _, err = run_cli("predict", "--model", run, *files, "--out", tmp_path / "o", "--register", *flags)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and text in lines[0], err
        assert not (tmp_path / "o").exists()


def test_a_worse_metric_is_refused():
    from brats_seg.preprocess.register import RegisterConfig, check_record

    record = {"metric_before": -0.50, "metric_after": -0.40, "rotation_deg": 1.0, "shift_mm": 1.0}
    with pytest.raises(InputError, match=r"did not improve the match \(Mattes MI -0.5 -> -0.4"):
        check_record(record, RegisterConfig(), "t2")
    check_record({**record, "metric_after": -0.497}, RegisterConfig(), "t2")  # within 1 % (MI on one grid): kept


def test_ingest_register_writes_registered_cases_that_preprocess_reads(tmp_path, run_cli):
    write_case(tmp_path / "data" / "P17")
    code, _, err = run_cli("ingest", tmp_path / "data", "--out", tmp_path / "raw.json")
    assert code == 2 and "--register" in err and not (tmp_path / "raw.json").exists()
    code, _, err = run_cli("ingest", tmp_path / "data", "--out", tmp_path / "raw.json", "--register")
    assert code == 0, err
    raw = json.loads((tmp_path / "raw.json").read_text())
    case = raw["cases"][0]
    assert raw["roots"][case["root"]] == "raw_registered" and case["images"]["t2"]["path"] == "P17/P17_t2.nii.gz"
    assert raw["config"]["register"]["reference"] == "t1ce"
    report = json.loads((tmp_path / "raw_registered" / "P17" / "P17_registration.json").read_text())
    assert report["registration"]["channels"]["t2"]["source"] == "../../data/P17/P17_t2"
    assert len(report["registration"]["channels"]["t2"]["source_sha256"]) == 64
    code, _, err = run_cli("preprocess", tmp_path / "raw.json", "--out", tmp_path / "pre", "--workers", "1")
    assert code == 0, err
