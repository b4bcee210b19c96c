"""Masks come back on the input's exact grid, and structures stay at the same world coordinates.

The "model" is a fixed 1x1x1 convolution that thresholds z-scored channels (WT from FLAIR, TC from
T1ce, ET from T2), so a bright box drawn at known world coordinates must come back labelled at
exactly the same voxels, whatever the orientation, obliquity or voxel size of the input grid.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_seg.infer import export
from brats_seg.infer.segmenter import ModelSpec, Segmenter
from brats_seg.io.labels import to_canonical

torch.set_num_threads(1)
CHANNELS = ("t1", "t1ce", "t2", "flair")
HALF_MM = {"flair": 7.0, "t1ce": 5.0, "t2": 3.0}  # nested boxes: WT ⊃ TC ⊃ ET


class ThresholdModel(torch.nn.Module):
    """logits = 20 * (z - 2): WT from flair, TC from t1ce, ET from t2 (regions mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(4, 3, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            for out_ch, in_ch in ((0, 3), (1, 1), (2, 2)):
                self.conv.weight[out_ch, in_ch] = 20.0
            self.conv.bias.fill_(-40.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def segmenter(spacing="native", **kw) -> Segmenter:
    return Segmenter(ThresholdModel(), ModelSpec("regions", CHANNELS, (16, 16, 16), spacing), **kw)


def rotation(degrees) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()


def make_affine(linear: np.ndarray, origin) -> np.ndarray:
    from brats_seg.synth.phantoms import qform_representable

    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = linear, origin
    return qform_representable(affine)  # so that qform and sform agree, as real scanners write them


GRIDS = {
    "ras": (np.diag([1.0, 1.0, 1.0]), (40, 36, 28), (1, 1)),
    "lps": (np.diag([-1.0, -1.0, 1.0]), (40, 36, 28), (1, 1)),
    "oblique": (rotation([25, -15, 160]) @ np.diag([1.1, 0.9, 1.3]), (40, 36, 28), (1, 1)),
    "anisotropic": (np.diag([-0.8, 0.8, 5.0]), (44, 40, 10), (1, 1)),
    "permuted_sform_only": (np.array([[0, 0, -1.2], [1.0, 0, 0], [0, -2.5, 0]]), (36, 14, 32), (0, 2)),
    "qform_only": (rotation([0, 10, 0]) @ np.diag([-1.0, 1.0, 1.5]), (36, 32, 20), (1, 0)),
}


def world(affine: np.ndarray, shape) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)


def boxes(affine: np.ndarray, shape) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """World-axis-aligned boxes around an off-centre voxel (so any flip would move them)."""
    centre = np.round(np.asarray(shape) * np.array([0.4, 0.6, 0.45])).astype(int)
    point = affine[:3, :3] @ centre + affine[:3, 3]
    xyz = world(affine, shape)
    return {c: np.all(np.abs(xyz - point) <= h, axis=-1) for c, h in HALF_MM.items()}, point


def write_case(folder: Path, case_id: str, affine: np.ndarray, shape, codes=(1, 1), save=None) -> tuple[Path, np.ndarray]:
    """Four channels with nested bright boxes; returns the case folder and the expected canonical labels."""
    rng = np.random.default_rng(0)
    brain = np.zeros(shape, bool)
    brain[tuple(slice(1, n - 1) for n in shape)] = True
    inside, _ = boxes(affine, shape)
    case = folder / case_id
    for i, channel in enumerate(CHANNELS):
        image = np.where(brain, rng.uniform(50, 150, shape), 0).astype(np.float32)
        if channel in inside:
            image[inside[channel]] = 2000.0
        save(case / f"{case_id}_{channel}.nii.gz", image, affine, qform_code=codes[0], sform_code=codes[1])
    expected = np.zeros(shape, np.uint8)
    expected[inside["flair"]] = 2
    expected[inside["flair"] & inside["t1ce"]] = 1
    expected[inside["flair"] & inside["t1ce"] & inside["t2"]] = 3
    return case, expected


def assert_same_grid(out: nib.Nifti1Image, ref: nib.Nifti1Image) -> None:
    assert out.shape == ref.shape
    assert out.get_data_dtype() == np.uint8
    for getter in ("get_sform", "get_qform"):
        m_out, code_out = getattr(out.header, getter)(coded=True)
        m_ref, code_ref = getattr(ref.header, getter)(coded=True)
        assert int(code_out) == int(code_ref), getter
        if code_ref:
            np.testing.assert_array_equal(m_out, m_ref)
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-6)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(ref.affine)


@pytest.mark.parametrize("grid", list(GRIDS))
def test_mask_lands_on_the_same_voxels_and_grid(tmp_path, save_nifti, grid):
    linear, shape, codes = GRIDS[grid]
    affine = make_affine(linear, origin=[-20.0, 13.0, -7.5])
    case, expected = write_case(tmp_path, "c1", affine, shape, codes, save_nifti)
    assert (expected == 3).any() and (expected == 1).any() and (expected == 2).any()
    out_path = export.write_mask(segmenter().predict(case).labels, _geometry(case), tmp_path / "mask.nii.gz", "brats2023")
    out, ref = nib.load(str(out_path)), nib.load(str(case / "c1_flair.nii.gz"))
    assert_same_grid(out, ref)
    np.testing.assert_array_equal(np.asarray(out.dataobj), expected)


def _geometry(case: Path):
    from brats_seg.io.volume import read_volume

    return read_volume(next(case.glob("*_flair.nii.gz")))[1]


def test_resampled_run_keeps_world_position(tmp_path, save_nifti):
    """A run preprocessed at 1.2 mm: the inverse resampling brings the box back to its place."""
    affine = make_affine(np.diag([-0.8, -0.8, 2.5]), origin=[30.0, 20.0, -10.0])
    shape = (48, 44, 16)
    case, expected = write_case(tmp_path, "c1", affine, shape, (1, 1), save_nifti)
    result = segmenter(spacing=(1.2, 1.2, 1.2)).predict(case)
    assert result.labels.shape == shape
    wt, wt_ref = result.labels > 0, expected > 0
    dice = 2 * (wt & wt_ref).sum() / (wt.sum() + wt_ref.sum())
    assert dice > 0.85
    xyz = world(affine, shape)
    np.testing.assert_allclose(xyz[wt].mean(0), xyz[wt_ref].mean(0), atol=0.8)  # mm
    assert set(np.unique(result.labels)) == {0, 1, 2, 3}


def test_label_conventions_round_trip(tmp_path, save_nifti):
    affine = make_affine(np.diag([-1.0, -1.0, 1.0]), origin=[0, 35, 0])
    case, expected = write_case(tmp_path, "c1", affine, (40, 36, 28), (1, 1), save_nifti)
    result = segmenter().predict(case)
    assert result.label_convention == "brats2021"  # the layout's own convention is the default
    disk = {c: np.asarray(result.mask_image(c).dataobj) for c in ("brats2021", "brats2023", "msd")}
    assert set(np.unique(disk["brats2021"])) == {0, 1, 2, 4}
    assert set(np.unique(disk["brats2023"])) == {0, 1, 2, 3}
    assert np.array_equal(disk["msd"] == 1, expected == 2)  # MSD: 1 is edema
    for convention, values in disk.items():
        np.testing.assert_array_equal(to_canonical(values, convention), expected)
    np.testing.assert_array_equal(np.asarray(segmenter().segment(case).dataobj), disk["brats2021"])


def test_brats2023_case_folder_defaults_to_its_convention(tmp_path, save_nifti):
    affine = make_affine(np.diag([-1.0, -1.0, 1.0]), origin=[0, 35, 0])
    case, expected = write_case(tmp_path, "c1", affine, (40, 36, 28), (1, 1), save_nifti)
    renamed = tmp_path / "BraTS-GLI-00001-000"
    renamed.mkdir()
    for src, dst in zip(CHANNELS, ("t1n", "t1c", "t2w", "t2f")):
        (case / f"c1_{src}.nii.gz").rename(renamed / f"BraTS-GLI-00001-000-{dst}.nii.gz")
    result = segmenter().predict(renamed)
    assert result.case_id == "BraTS-GLI-00001-000" and result.label_convention == "brats2023"
    assert 3 in np.asarray(result.mask_image().dataobj) and 4 not in np.asarray(result.mask_image().dataobj)


def test_written_file_and_in_memory_image_have_the_same_header(tmp_path, save_nifti):
    linear, shape, codes = GRIDS["permuted_sform_only"]
    case, _ = write_case(tmp_path, "c1", make_affine(linear, [1, 2, 3]), shape, codes, save_nifti)
    result = segmenter(overlap=0.25).predict(case, probabilities=True)
    path = export.write_mask(result.labels, result.geometry, tmp_path / "m.nii.gz", "brats2021")
    written, memory = nib.load(str(path)), result.mask_image("brats2021")
    assert written.header.binaryblock == nib.Nifti1Image.from_bytes(memory.to_bytes()).header.binaryblock
    probs = export.write_probabilities(result.probabilities, result.geometry, tmp_path / "p.nii.gz")
    prob_img = nib.load(str(probs))
    assert prob_img.shape == (*shape, 3) and prob_img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(prob_img.affine, written.affine)
    wt = np.asarray(prob_img.dataobj)[..., 0] > 0.5
    np.testing.assert_array_equal(wt, result.labels > 0)


def test_files_dict_and_raw_manifest_entry_give_the_same_mask(tmp_path, save_nifti):
    from brats_seg.ingest.stage import ingest
    from brats_seg.io.manifest import manifest_root

    linear, shape, codes = GRIDS["oblique"]
    case, expected = write_case(tmp_path / "data", "c1", make_affine(linear, [5, 5, 5]), shape, codes, save_nifti)
    seg = segmenter()
    files = {c: case / f"c1_{c}.nii.gz" for c in CHANNELS}
    by_files = seg.predict(files)
    raw = ingest([tmp_path / "data"], tmp_path / "raw.json")
    by_entry = seg.predict(raw["cases"][0], root=manifest_root(tmp_path / "raw.json", raw))
    assert by_files.case_id == by_entry.case_id == "c1"
    np.testing.assert_array_equal(by_files.labels, expected)
    np.testing.assert_array_equal(by_entry.labels, expected)


def test_nrrd_input_comes_back_on_its_grid(tmp_path):
    """An oblique LPS NRRD (read through SimpleITK) -> NIfTI mask with the same RAS affine."""
    import SimpleITK as sitk

    from brats_seg.io.volume import read_volume

    shape = (36, 30, 12)
    rng = np.random.default_rng(1)
    data = np.zeros(shape, np.float32)
    data[1:-1, 1:-1, 1:-1] = rng.uniform(50, 150, (34, 28, 10))
    data[10:16, 8:14, 4:7] = 3000.0
    img = sitk.GetImageFromArray(data.transpose(2, 1, 0).copy())
    img.SetSpacing((0.78, 0.78, 4.0))
    img.SetOrigin((-99.6, 99.6, -78.0))
    img.SetDirection(tuple(rotation([0, 0, 12]).ravel()))
    path = tmp_path / "case.nrrd"
    sitk.WriteImage(img, str(path))
    result = segmenter().predict({c: path for c in CHANNELS})
    _, geom = read_volume(path)
    out = result.mask_image("brats2021")
    assert out.shape == shape
    np.testing.assert_allclose(out.affine, geom.affine_array, atol=1e-5)
    assert int(out.header["sform_code"]) == 1 and int(out.header["qform_code"]) == 1
    expected = np.zeros(shape, np.uint8)
    expected[10:16, 8:14, 4:7] = 3  # bright in every channel: WT, TC and ET
    np.testing.assert_array_equal(result.labels, expected)
