"""DICOM series folders in (io.dicom): geometry through the same path as NIfTI, one series picked,
masks written as NIfTI on the t1ce series' grid at the same physical points (voxel corners within
1e-3 mm), ingest of case folders of DICOM series. Series are written here, slice by slice, with
SimpleITK's ImageFileWriter (SimpleITK's "Dicom Series From Array" recipe); `write_series` is
shared by the bad-input and real-data tests."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats_seg.io.dicom import locale_kept
from brats_seg.io.geometry import LPS_TO_RAS

STUDY_UID = "1.2.826.0.1.3680043.2.1125.7.1"


def series_uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.2.1125.7.{100 + n}"


def write_series(folder: Path, data: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None,
                 uid: str = series_uid(1), description: str = "T1 AX", skip=(), sop_class: str | None = None,
                 modality: str = "MR", name: str = "IM") -> Path:
    """`data` (x = column, y = row, z = slice) as one DICOM file per slice; geometry in LPS mm;
    `direction`: 3x3 with the axes' directions as columns; `skip`: slice indices not written."""
    import SimpleITK as sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, dtype=np.int16).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin])
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    img.SetDirection([float(v) for v in d.ravel()])
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    iop = "\\".join(f"{v:.10f}" for v in (*d[:, 0], *d[:, 1]))
    for k in range(data.shape[2]):
        if k in skip:
            continue
        sl = img[:, :, k]
        tags = {"0008|0060": modality, "0020|000d": STUDY_UID, "0020|000e": uid, "0008|103e": description,
                "0020|0037": iop, "0020|0013": str(k + 1), "0018|0050": f"{spacing[2]:g}",
                "0020|0032": "\\".join(f"{v:.10f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))),
                "0008|0018": f"{uid}.{k + 1}", "0010|0020": "P17"}
        if sop_class:
            tags["0008|0016"] = sop_class
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{name}{k:04d}.dcm"))
        with locale_kept():  # GDCM's writer sets LC_ALL to "C"
            writer.Execute(sl)
    return folder


def oblique(degrees=(12.0, -8.0, 20.0)) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()


def volume(shape=(20, 18, 14), seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """A positive block (zero border) with a bright core, like a skull-stripped brain with a tumour."""
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, np.float32)
    inner = tuple(slice(2, s - 2) for s in shape)
    out[inner] = rng.uniform(80, 120, out[inner].shape)
    core = tuple(slice(s // 2 - 3, s // 2 + 3) for s in shape)
    out[core] = 400 * scale
    return out


def corners_lps(shape, spacing, origin, direction) -> np.ndarray:
    """The physical (LPS) points of the volume's 8 corner voxel centres, from the written tags."""
    idx = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)], float)
    return np.asarray(origin) + (np.asarray(direction) @ (idx * np.asarray(spacing)).T).T


def ras_of(affine: np.ndarray, shape) -> np.ndarray:
    idx = np.array([[i, j, k, 1] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)], float)
    return (affine @ idx.T).T[:, :3]


GEOMETRY = {"spacing": (0.9, 1.1, 2.5), "origin": (-12.0, 30.5, -40.0)}


def test_oblique_series_reads_with_the_physical_geometry_of_its_tags(tmp_path):
    from brats_seg.io.volume import read_volume

    data = volume()
    d = oblique()
    write_series(tmp_path / "t1", data, direction=d, **GEOMETRY)
    got, geom = read_volume(tmp_path / "t1")
    np.testing.assert_array_equal(got, data.astype(np.int16))
    assert geom.source_format == "dicom" and geom.shape == data.shape
    expected_ras = (LPS_TO_RAS[:3, :3] @ corners_lps(data.shape, GEOMETRY["spacing"], GEOMETRY["origin"], d).T).T
    assert np.abs(ras_of(geom.affine_array, data.shape) - expected_ras).max() <= 1e-3
    np.testing.assert_allclose(geom.spacing, GEOMETRY["spacing"], atol=1e-4)


def test_files_are_read_in_slice_order_whatever_their_names(tmp_path):
    """GDCM sorts by position along the normal; file names in reverse order must not flip the volume."""
    import os

    from brats_seg.io.volume import read_volume

    data = volume()
    folder = write_series(tmp_path / "t1", data)
    names = sorted(folder.iterdir())
    for path, new in zip(names, reversed(names)):
        os.rename(path, path.with_name("x" + new.name))
    got, _ = read_volume(folder)
    np.testing.assert_array_equal(got, data.astype(np.int16))


def write_case(folder: Path, direction=None, n_series: int = 1, **geometry) -> dict[str, Path]:
    """Four DICOM series folders of one patient on one (possibly oblique) grid; flair's core is bright."""
    paths = {}
    for i, channel in enumerate(("t1", "t1ce", "t2", "flair")):
        data = volume(seed=i, scale=1.0 if channel in ("flair", "t1ce", "t2") else 0.2)
        paths[channel] = write_series(folder / channel, data, direction=direction, uid=series_uid(10 + i),
                                      description=channel.upper(), **(geometry or GEOMETRY))
    for extra in range(1, n_series):  # a second series (a localizer) in the t2 folder
        write_series(folder / "t2", volume((20, 18, 6), seed=9), uid=series_uid(50 + extra), description="LOCALIZER",
                     name=f"LOC{extra}_", **(geometry or GEOMETRY))
    return paths


def test_predict_writes_the_mask_on_the_t1ce_series_grid_at_the_same_physical_points(tmp_path, run_cli):
    from tests.run_fixtures import make_tiny_run

    run = make_tiny_run(tmp_path / "run")
    d = oblique((5.0, 15.0, -25.0))
    paths = write_case(tmp_path / "P17", direction=d)
    code, _, err = run_cli("predict", "--model", run, *(a for c, p in paths.items() for a in (f"--{c}", p)),
                           "--out", tmp_path / "pred")
    assert code == 0, err
    mask = nib.load(str(tmp_path / "pred" / "P17.nii.gz"))  # case id: the patient's folder
    shape = (20, 18, 14)
    assert mask.shape == shape and mask.get_data_dtype() == np.uint8
    expected_ras = (LPS_TO_RAS[:3, :3] @ corners_lps(shape, GEOMETRY["spacing"], GEOMETRY["origin"], d).T).T
    for affine in (mask.affine, mask.header.get_qform(), mask.header.get_sform()):
        assert np.abs(ras_of(affine, shape) - expected_ras).max() <= 1e-3
    assert int(mask.header["sform_code"]) == 1 and int(mask.header["qform_code"]) == 1


def test_a_folder_of_several_series_needs_series_and_series_picks_one(tmp_path, run_cli):
    from tests.run_fixtures import make_tiny_run

    run = make_tiny_run(tmp_path / "run")
    paths = write_case(tmp_path / "P17", n_series=2)
    args = ["predict", "--model", run, *(a for c, p in paths.items() for a in (f"--{c}", p)), "--out", tmp_path / "o"]
    code, _, err = run_cli(*args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {paths['t2']}: holds 2 DICOM series: ")
    assert series_uid(12) in lines[0] and series_uid(51) in lines[0] and "'LOCALIZER'" in lines[0]
    assert "--series UID" in lines[0]
    assert not (tmp_path / "o").exists()
    for choice in (series_uid(12), f"t2={series_uid(12)}"):
        code, _, err = run_cli(*args, "--series", choice)
        assert code == 0, err
    code, _, err = run_cli(*args, "--series", series_uid(99))  # a typo is named, not ignored
    assert code == 2 and "holds 2 DICOM series" in err
    code, _, err = run_cli(*args, "--series", f"t2={series_uid(99)}")
    assert code == 2 and f"holds no series {series_uid(99)} (--series t2={series_uid(99)})" in err


@pytest.mark.parametrize("text", ["abc", "t9=1.2.3", "1.2.3x", "t2=", "1..2"])
def test_bad_series_flags_are_one_line_naming_series(tmp_path, run_cli, text):
    code, _, err = run_cli("predict", "--model", tmp_path / "none", "--t1", "a", "--t1ce", "b", "--t2", "c",
                           "--flair", "d", "--out", tmp_path / "o", "--series", text)
    assert code == 2 and err.startswith("error: --series: ") and len(err.strip().splitlines()) == 1


def test_ingest_reads_case_folders_of_dicom_series_and_preprocess_verifies_them(tmp_path, run_cli):
    import json

    write_case(tmp_path / "data" / "P17")
    code, _, err = run_cli("ingest", tmp_path / "data", "--out", tmp_path / "raw.json")
    assert code == 0, err
    case = json.loads((tmp_path / "raw.json").read_text())["cases"][0]
    assert case["id"] == "P17" and case["images"]["t1ce"]["path"] == "P17/t1ce"
    rec = case["images"]["t2"]
    assert rec["source_format"] == "dicom" and rec["series_uid"] == series_uid(12) and rec["slices"] == 14
    code, _, err = run_cli("preprocess", tmp_path / "raw.json", "--out", tmp_path / "pre", "--workers", "1")
    assert code == 0, err
    code, out, err = run_cli("preprocess", tmp_path / "raw.json", "--out", tmp_path / "pre", "--workers", "1")
    assert code == 0 and "0 done, 1 skipped" in out + err, (out, err)  # an unchanged series is not redone
    slice_file = sorted((tmp_path / "data" / "P17" / "t2").iterdir())[3]
    slice_file.write_bytes(slice_file.read_bytes()[:-2] + b"\x01\x02")  # one slice changes
    code, _, err = run_cli("preprocess", tmp_path / "raw.json", "--out", tmp_path / "pre2", "--workers", "1")
    assert code == 1 and "changed since the manifest was written (the series' sha256 differs)" in err


def test_series_hash_changes_with_any_slice(tmp_path):
    from brats_seg.io.dicom import list_series, series_sha256

    folder = write_series(tmp_path / "s", volume())
    files = list_series(folder)[0].files
    before = series_sha256(files)
    assert series_sha256(files[:-1]) != before
    Path(files[0]).rename(Path(files[0]).with_name("renamed.dcm"))
    assert series_sha256(list_series(folder)[0].files) != before


def test_predict_case_folder_of_dicom_series(tmp_path, run_cli):
    from tests.run_fixtures import make_tiny_run

    run = make_tiny_run(tmp_path / "run")
    write_case(tmp_path / "P17")
    code, _, err = run_cli("predict", "--model", run, "--case", tmp_path / "P17", "--out", tmp_path / "pred")
    assert code == 0, err
    assert nib.load(str(tmp_path / "pred" / "P17.nii.gz")).shape == (20, 18, 14)
