"""Layout detection and discovery: BraTS 2018-2021, BraTS 2023, MSD Task01, nnU-Net raw, NRRD/MHA."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from brats_seg.ingest.layouts import detect_layout
from brats_seg.io.geometry import LPS_TO_RAS
from tests.conftest import BRATS_AFFINE, SHAPE, label_map, make_case, phantom, save_nifti

CHANNELS = ["t1", "t1ce", "t2", "flair"]
MSD_MODALITY = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}  # as in Task01_BrainTumour/dataset.json
MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}


def ingest_ok(run_cli, *argv) -> dict:
    *sources, out = argv
    code, _, err = run_cli("ingest", *sources, "--out", out)
    assert code == 0, err
    return json.loads(Path(out).read_text())


def by_id(manifest: dict) -> dict:
    return {c["id"]: c for c in manifest["cases"]}


# --- BraTS 2018-2021 ---------------------------------------------------------------------------------

def test_brats2021_dataset_folder(tmp_path, run_cli):
    ds = tmp_path / "ds"
    make_case(ds, "Brats18_A_1")
    make_case(ds, "Brats18_B_1", labels=(1, 2))  # no enhancing tumour: still the layout's convention
    (ds / "README.txt").write_text("not a case")
    assert detect_layout(ds) == "brats2021"
    m = ingest_ok(run_cli, ds, tmp_path / "out" / "raw.json")
    assert m["stage"] == "raw" and m["schema_version"] == 1
    assert m["roots"] == ["../ds"]
    cases = by_id(m)
    assert sorted(cases) == ["Brats18_A_1", "Brats18_B_1"]
    for cid, case in cases.items():
        assert case["channels"] == CHANNELS
        assert list(case["images"]) == CHANNELS
        assert case["label_convention"] == "brats2021"
        assert case["layout"] == "brats2021"
        assert case["root"] == 0
        for ch, name in zip(CHANNELS, ["t1", "t1ce", "t2", "flair"]):
            rec = case["images"][ch]
            assert rec["path"] == f"{cid}/{cid}_{name}.nii.gz"
            assert rec["shape"] == list(SHAPE)
            assert rec["spacing"] == [1.0, 1.0, 1.0]
            assert rec["orientation"] == "LPS"
            assert rec["affine"] == BRATS_AFFINE.tolist()
            assert rec["volume_index"] is None
            assert rec["dtype"] == "float32"
            assert len(rec["sha256"]) == 64
        assert case["seg"]["path"] == f"{cid}/{cid}_seg.nii.gz"
        assert case["seg"]["dtype"] == "uint8"


def test_sha256_in_manifest_is_that_of_the_file(tmp_path, run_cli):
    import hashlib

    c = make_case(tmp_path / "ds", "c1")
    m = ingest_ok(run_cli, tmp_path / "ds", tmp_path / "raw.json")
    rec = m["cases"][0]["images"]["t1ce"]
    assert rec["sha256"] == hashlib.sha256((c / "c1_t1ce.nii.gz").read_bytes()).hexdigest()


def test_single_case_folder_given_directly(tmp_path, run_cli):
    case_dir = make_case(tmp_path / "ds", "Brats18_X_1", suffix=".nii")
    assert detect_layout(case_dir) == "brats2021"
    m = ingest_ok(run_cli, case_dir, tmp_path / "raw.json")
    (case,) = m["cases"]
    assert case["id"] == "Brats18_X_1"
    assert case["images"]["flair"]["path"] == "Brats18_X_1_flair.nii"
    assert case["seg"]["path"] == "Brats18_X_1_seg.nii"
    assert m["roots"] == ["ds/Brats18_X_1"]


def test_two_sources_get_two_roots(tmp_path, run_cli):
    make_case(tmp_path / "a", "c1")
    make_case(tmp_path / "b", "c2", seg=False)
    m = ingest_ok(run_cli, tmp_path / "a", tmp_path / "b", tmp_path / "raw.json")
    assert m["roots"] == ["a", "b"]
    assert {c["id"]: c["root"] for c in m["cases"]} == {"c1": 0, "c2": 1}


# --- BraTS 2023 --------------------------------------------------------------------------------------

def test_brats2023_dataset(tmp_path, run_cli):
    ds = tmp_path / "ds"
    make_case(ds, "BraTS-GLI-00001-000", layout="brats2023")
    make_case(ds, "BraTS-GLI-00002-000", layout="brats2023", seg=False)
    assert detect_layout(ds) == "brats2023"
    m = ingest_ok(run_cli, ds, tmp_path / "raw.json")
    cases = by_id(m)
    labelled = cases["BraTS-GLI-00001-000"]
    assert labelled["channels"] == CHANNELS and list(labelled["images"]) == CHANNELS
    for ch, suffix in zip(CHANNELS, ["t1n", "t1c", "t2w", "t2f"]):
        assert labelled["images"][ch]["path"] == f"BraTS-GLI-00001-000/BraTS-GLI-00001-000-{suffix}.nii.gz"
    assert labelled["seg"]["path"] == "BraTS-GLI-00001-000/BraTS-GLI-00001-000-seg.nii.gz"
    assert labelled["label_convention"] == "brats2023"
    assert labelled["layout"] == "brats2023"
    assert cases["BraTS-GLI-00002-000"]["seg"] is None


def test_explicit_layout_and_labels_are_recorded(tmp_path, run_cli):
    make_case(tmp_path / "ds", "c1", labels=(1, 2, 3))
    out = tmp_path / "raw.json"
    code, _, err = run_cli("ingest", tmp_path / "ds", "--out", out, "--layout", "brats2021", "--labels", "msd")
    assert code == 0, err
    m = json.loads(out.read_text())
    assert m["config"]["layout"] == "brats2021" and m["config"]["labels"] == "msd"
    assert m["cases"][0]["label_convention"] == "msd"


# --- MSD Task01 --------------------------------------------------------------------------------------

def make_msd(root: Path, n_train: int = 2, with_test: bool = True) -> Path:
    """A tiny Task01_BrainTumour: 4D images (FLAIR, T1w, t1gd, T2w), MSD labels, dataset.json."""
    training, test = [], []
    for i in range(1, n_train + 1):
        cid = f"BRATS_{i:03d}"
        img = np.stack([phantom(SHAPE, i, c) for c in range(4)], axis=-1)
        save_nifti(root / "imagesTr" / f"{cid}.nii.gz", img)
        save_nifti(root / "labelsTr" / f"{cid}.nii.gz", label_map(SHAPE, (1, 2, 3)))
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    if with_test:
        save_nifti(root / "imagesTs" / "BRATS_485.nii.gz", np.stack([phantom(SHAPE, 9, c) for c in range(4)], axis=-1))
        test.append("./imagesTs/BRATS_485.nii.gz")
    # macOS resource-fork files like those shipped in the real Task01 archive must not matter
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07" + bytes(100))
    meta = {"name": "BRATS", "tensorImageSize": "4D", "modality": MSD_MODALITY, "labels": MSD_LABELS,
            "numTraining": n_train, "numTest": len(test), "training": training, "test": test}
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return root


def test_msd_task01(tmp_path, run_cli):
    ds = make_msd(tmp_path / "Task01_BrainTumour")
    assert detect_layout(ds) == "msd"
    m = ingest_ok(run_cli, ds, tmp_path / "raw.json")
    cases = by_id(m)
    assert sorted(cases) == ["BRATS_001", "BRATS_002", "BRATS_485"]
    case = cases["BRATS_001"]
    assert case["layout"] == "msd"
    assert case["channels"] == CHANNELS and list(case["images"]) == CHANNELS
    assert {ch: case["images"][ch]["volume_index"] for ch in CHANNELS} == {"t1": 1, "t1ce": 2, "t2": 3, "flair": 0}
    for ch in CHANNELS:
        assert case["images"][ch]["path"] == "imagesTr/BRATS_001.nii.gz"
        assert case["images"][ch]["shape"] == list(SHAPE)
    assert case["seg"]["path"] == "labelsTr/BRATS_001.nii.gz"
    assert case["seg"]["volume_index"] is None
    assert case["label_convention"] == "msd"
    assert cases["BRATS_485"]["seg"] is None
    assert cases["BRATS_485"]["images"]["t1ce"]["path"] == "imagesTs/BRATS_485.nii.gz"


def test_msd_image_with_too_few_channels_is_refused(tmp_path, run_cli):
    ds = make_msd(tmp_path / "msd", n_train=1, with_test=False)
    bad = ds / "imagesTr" / "BRATS_001.nii.gz"
    save_nifti(bad, np.stack([phantom(SHAPE, 1, c) for c in range(3)], axis=-1))
    code, _, err = run_cli("ingest", ds, "--out", tmp_path / "raw.json")
    assert code == 2
    assert err.splitlines() == [f"error: {bad}: expected a 4D image with at least 4 channels, got shape [24, 20, 16, 3]"]


# --- nnU-Net raw -------------------------------------------------------------------------------------

def make_nnunet(root: Path, channel_names: dict, labels: dict, label_values=(1, 2, 3), cases=("BraTS_001", "BraTS_002"),
                test_cases=("BraTS_900",)) -> Path:
    for folder, ids, with_label in (("Tr", cases, True), ("Ts", test_cases, False)):
        for n, cid in enumerate(ids):
            for index in range(len(channel_names)):
                save_nifti(root / f"images{folder}" / f"{cid}_{index:04d}.nii.gz", phantom(SHAPE, n, index))
            if with_label:
                save_nifti(root / f"labels{folder}" / f"{cid}.nii.gz", label_map(SHAPE, label_values))
    meta = {"channel_names": channel_names, "labels": labels, "numTraining": len(cases), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return root


def test_nnunet_raw_in_brats_order(tmp_path, run_cli):
    ds = make_nnunet(tmp_path / "Dataset500_Brats", {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
                     {"background": 0, "NCR": 1, "ED": 2, "ET": 3})
    assert detect_layout(ds) == "nnunet"
    m = ingest_ok(run_cli, ds, tmp_path / "raw.json")
    cases = by_id(m)
    assert sorted(cases) == ["BraTS_001", "BraTS_002", "BraTS_900"]
    case = cases["BraTS_002"]
    assert case["layout"] == "nnunet"
    assert list(case["images"]) == CHANNELS
    for index, ch in enumerate(CHANNELS):
        assert case["images"][ch]["path"] == f"imagesTr/BraTS_002_{index:04d}.nii.gz"
    assert case["seg"]["path"] == "labelsTr/BraTS_002.nii.gz"
    assert case["label_convention"] == "brats2023"
    assert cases["BraTS_900"]["seg"] is None
    assert cases["BraTS_900"]["images"]["t1"]["path"] == "imagesTs/BraTS_900_0000.nii.gz"


def test_nnunet_channels_are_reordered_to_t1_t1ce_t2_flair(tmp_path, run_cli):
    ds = make_nnunet(tmp_path / "Dataset001_BrainTumour", MSD_MODALITY,
                     {"background": 0, "NCR": 1, "ED": 2, "ET": 3}, test_cases=())
    m = ingest_ok(run_cli, ds, tmp_path / "raw.json")
    images = by_id(m)["BraTS_001"]["images"]
    assert list(images) == CHANNELS
    assert {ch: images[ch]["path"] for ch in CHANNELS} == {
        "flair": "imagesTr/BraTS_001_0000.nii.gz", "t1": "imagesTr/BraTS_001_0001.nii.gz",
        "t1ce": "imagesTr/BraTS_001_0002.nii.gz", "t2": "imagesTr/BraTS_001_0003.nii.gz"}


@pytest.mark.parametrize("labels", [
    # nnUNetv2_convert_MSD_dataset on Task01 (Dataset001_BrainTumour): 1 edema, 2 non-enhancing, 3 enhancing
    {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumour": 3},
    # nnU-Net's own BraTS 2021 conversion (Dataset137_BraTS2021): region-based, 1 ED, 2 NCR, 3 ET
    {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
], ids=["msd_converted", "dataset137_regions"])
def test_nnunet_label_convention_follows_dataset_json_labels(tmp_path, run_cli, labels):
    """dataset.json 'labels' says what 1 and 2 mean; edema=1 is the MSD convention, not BraTS 2023."""
    ds = make_nnunet(tmp_path / "nn", MSD_MODALITY, labels, test_cases=())
    m = ingest_ok(run_cli, ds, tmp_path / "raw.json")
    assert {c["label_convention"] for c in m["cases"]} == {"msd"}


# --- NRRD / MHA through SimpleITK --------------------------------------------------------------------

def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


SITK_SPACING = (0.9, 1.1, 2.0)
SITK_ORIGIN = (10.0, -20.5, 30.25)
SITK_DIRECTION = _rotation(0.1, -0.2, 0.3)


def write_sitk(path: Path, xyz: np.ndarray) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(xyz.transpose(2, 1, 0)))  # sitk arrays are (z, y, x)
    img.SetSpacing(SITK_SPACING)
    img.SetOrigin(SITK_ORIGIN)
    img.SetDirection(tuple(SITK_DIRECTION.ravel()))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)
    return path


def expected_ras_affine() -> np.ndarray:
    lps = np.eye(4)
    lps[:3, :3] = SITK_DIRECTION * np.asarray(SITK_SPACING)
    lps[:3, 3] = SITK_ORIGIN
    return LPS_TO_RAS @ lps


def test_nrrd_and_mha_case_records_the_lps_to_ras_affine(tmp_path, run_cli):
    case = tmp_path / "ds" / "c1"
    for i, (ch, ext) in enumerate(zip(CHANNELS, [".nrrd", ".nrrd", ".mha", ".mha"])):
        write_sitk(case / f"c1_{ch}{ext}", phantom(SHAPE, 0, i))
    write_sitk(case / "c1_seg.nrrd", label_map(SHAPE, (1, 2, 4)))
    m = ingest_ok(run_cli, tmp_path / "ds", tmp_path / "raw.json")
    (rec,) = m["cases"]
    assert rec["label_convention"] == "brats2021"
    expected = expected_ras_affine()
    for ch in CHANNELS + ["seg"]:
        f = rec["seg"] if ch == "seg" else rec["images"][ch]
        np.testing.assert_allclose(np.asarray(f["affine"]), expected, atol=1e-9)
        np.testing.assert_allclose(f["spacing"], SITK_SPACING, atol=1e-6)
        assert f["shape"] == list(SHAPE)
    assert rec["images"]["t2"]["path"] == "c1/c1_t2.mha"
    import nibabel as nib

    assert rec["images"]["t1"]["orientation"] == "".join(nib.aff2axcodes(expected))
    assert rec["images"]["t1"]["orientation"] != "RAS"  # the LPS flip is really applied
