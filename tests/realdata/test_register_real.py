"""Co-registration on a shared real BraTS 2018 case: t2 and flair moved by known rigid transforms
(rotations up to 10 degrees per axis, shifts up to 10 mm) onto other grids (t2: anisotropic NIfTI;
flair: an oblique DICOM series) are registered back onto the t1ce through predict's own reading path
(infer.prepare.read_files with a RegisterConfig). The recovered transform, composed with the known
one, must be near identity (max displacement over the brain's bounding box <= 1 mm, rotation <= 1
degree), and a deterministic thresholding model's WT mask (from FLAIR and T2 intensities) must match
the unmoved case's mask (Dice >= 0.90). The full-resolution test is `slow`; the default suite runs the
same on the case resampled to 2 mm with smaller transforms. Reads ../shared/datasets in place."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from brats_seg.infer.prepare import find_files, read_files
from brats_seg.infer.segmenter import ModelSpec, Segmenter
from brats_seg.preprocess.register import RegisterConfig, rotation_deg, to_sitk, transform_matrix
from tests.unit.test_dicom import write_series

pytestmark = pytest.mark.realdata
torch.set_num_threads(1)

from tests.realdata.test_predict_real import CASE, CHANNELS, need  # noqa: E402  (one definition of the shared case)


class ThresholdModel(torch.nn.Module):
    """Regions mode, like a network with a small receptive field: WT where the local mean (5^3 voxels)
    of z(flair) > 1, TC where that of z(t2) > 1.5, ET where that of z(t1ce) > 2."""

    def __init__(self, size: int = 5) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(4, 3, size, padding=size // 2)
        with torch.no_grad():
            self.conv.weight.zero_()
            for out_ch, in_ch, threshold in ((0, 3, 1.0), (1, 2, 1.5), (2, 1, 2.0)):
                self.conv.weight[out_ch, in_ch] = 20.0 / size ** 3
                self.conv.bias[out_ch] = -20.0 * threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def rigid(centre, degrees, shift):
    import SimpleITK as sitk

    t = sitk.Euler3DTransform()
    t.SetCenter([float(c) for c in centre])
    t.SetRotation(*np.radians(degrees))
    t.SetTranslation([float(s) for s in shift])
    return t


def grid(centre, spacing, size, direction=np.eye(3), offset=(0.0, 0.0, 0.0)):
    """An empty image of `size` voxels of `spacing` mm, centred at `centre` + `offset` (LPS)."""
    import SimpleITK as sitk

    img = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in np.asarray(direction).ravel()])
    half = np.asarray(direction) @ ((np.asarray(size) - 1) * np.asarray(spacing) / 2.0)
    img.SetOrigin([float(v) for v in np.asarray(centre) + np.asarray(offset) - half])
    return img


def brain_centre_and_corners(image, data: np.ndarray):
    nz = np.argwhere(data != 0)
    lo, hi = nz.min(0), nz.max(0)
    corners = [image.TransformIndexToPhysicalPoint([int(v) for v in (a, b, c)])
               for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])]
    centre = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in (lo + hi) / 2.0])
    return np.asarray(centre), np.asarray(corners)


def load(path: Path, step_mm: float | None):
    """A channel as a SimpleITK image, resampled onto a `step_mm` grid over the same field (None: as is)."""
    import SimpleITK as sitk

    from brats_seg.io.volume import read_volume

    img = to_sitk(*read_volume(path))
    if step_mm is None:
        return img
    size = [int(round(n * s / step_mm)) for n, s in zip(img.GetSize(), img.GetSpacing())]
    out = sitk.Image(size, sitk.sitkFloat32)
    out.SetSpacing([step_mm] * 3)
    out.SetOrigin(img.GetOrigin())
    out.SetDirection(img.GetDirection())
    return sitk.Resample(img, out, sitk.Transform(), sitk.sitkLinear, 0.0)


def build(tmp: Path, step_mm: float | None, moves: dict) -> tuple[dict, dict, dict, np.ndarray]:
    """(unmoved paths, moved paths, known transforms, brain-box corners in t1ce space)."""
    import SimpleITK as sitk

    images = {c: load(need(CASE / f"{CASE.name}_{c}.nii.gz"), step_mm) for c in CHANNELS}
    centre, corners = brain_centre_and_corners(images["t1ce"], sitk.GetArrayFromImage(images["t1ce"]).T)
    unmoved, moved, known = {}, {}, {}
    for c, img in images.items():
        unmoved[c] = tmp / "unmoved" / f"{c}.nii.gz"
        unmoved[c].parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.Cast(img, sitk.sitkFloat32), str(unmoved[c]))
        moved[c] = unmoved[c]
    for c, (degrees, shift, spacing, size, direction, as_dicom) in moves.items():
        known[c] = rigid(centre, degrees, shift)
        target = grid(centre, spacing, size, direction, offset=(4.0, -3.0, 5.0))
        out = sitk.Resample(images[c], target, known[c].GetInverse(), sitk.sitkBSpline, 0.0)  # out(p) = img(K^-1 p)
        out = sitk.Clamp(out, lowerBound=0.0)  # B-spline overshoot below 0 at the brain edge
        if as_dicom:
            data = np.round(sitk.GetArrayFromImage(out).T).astype(np.int16)
            moved[c] = write_series(tmp / "moved" / c, data, out.GetSpacing(), out.GetOrigin(),
                                    np.asarray(out.GetDirection()).reshape(3, 3), description=c.upper())
        else:
            moved[c] = tmp / "moved" / f"{c}.nii.gz"
            moved[c].parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(out, str(moved[c]))
    return unmoved, moved, known, corners


def wt(labels: np.ndarray) -> np.ndarray:
    return labels > 0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


def check(tmp: Path, step_mm: float | None, moves: dict, threads: int = 2) -> dict:
    unmoved, moved, known, corners = build(tmp, step_mm, moves)
    seg = Segmenter(ThresholdModel(), ModelSpec("regions", CHANNELS, (64, 64, 64), "native"), overlap=0.0)
    case = read_files(find_files(moved, list(CHANNELS)), register=RegisterConfig(threads=threads))
    assert case.registration["reference"] == "t1ce" and set(case.registration["channels"]) == {"t1", "t2", "flair"}
    errors = {}
    for c, k in known.items():
        rec = case.registration["channels"][c]
        assert rec["metric_after"] < rec["metric_before"]
        residual = np.linalg.inv(transform_matrix(k)) @ np.asarray(rec["matrix_lps"])
        moved_by = np.linalg.norm(corners @ residual[:3, :3].T + residual[:3, 3] - corners, axis=1).max()
        errors[c] = (float(moved_by), rotation_deg(residual))
    for c, (mm, deg) in errors.items():
        assert mm <= 1.0 and deg <= 1.0, f"{c}: residual {mm:.3f} mm, {deg:.3f} degrees ({errors})"
    reference = seg.predict(read_files(find_files(unmoved, list(CHANNELS))))
    result = seg.predict(case)
    assert result.geometry == reference.geometry  # the mask is on the t1ce's grid
    assert np.count_nonzero(wt(reference.labels)) > 1000
    score = dice(wt(result.labels), wt(reference.labels))
    assert score >= 0.90, f"WT Dice {score:.3f} against the unmoved case's mask (residuals {errors})"
    print(f"registration residuals (mm, degrees): {errors}; WT Dice {score:.4f}")
    return {"errors": errors, "wt_dice": score}


def test_known_moves_are_recovered_fast_variant(tmp_path):
    """2 mm copy of the case, moves up to 6 degrees / 6 mm: the default suite's check."""
    from tests.unit.test_dicom import oblique

    moves = {"t2": ((5.0, -4.0, 3.0), (5.0, -6.0, 4.0), (2.2, 2.0, 2.5), (110, 120, 68), np.eye(3), False),
             "flair": ((-3.0, 6.0, -4.0), (-6.0, 3.0, 5.0), (2.0, 2.0, 3.0), (116, 116, 56), oblique((0, 0, 8)), True)}
    check(tmp_path, 2.0, moves)


@pytest.mark.slow
def test_known_moves_are_recovered_full_resolution(tmp_path):
    """The full 240x240x155 case, rotations up to 10 degrees and shifts up to 10 mm per axis."""
    from tests.unit.test_dicom import oblique

    moves = {"t2": ((8.0, -6.0, 5.0), (7.0, -9.0, 6.0), (1.2, 1.1, 1.5), (200, 218, 110), np.eye(3), False),
             "flair": ((-5.0, 10.0, -7.0), (-10.0, 5.0, 8.0), (1.0, 1.0, 2.0), (230, 230, 80), oblique((0, 0, 10)),
                       True)}
    check(tmp_path, None, moves)


def test_real_case_as_dicom_series_gives_the_niftis_mask_on_the_same_physical_grid(tmp_path):
    """The four BraTS NIfTI files rewritten as DICOM series (one file per slice) predict the same mask,
    written as NIfTI whose voxel corners sit at the NIfTI's physical points (within 1e-3 mm)."""
    import nibabel as nib

    from brats_seg.infer import export
    from brats_seg.io.geometry import LPS_TO_RAS
    from brats_seg.io.volume import read_volume

    nifti = {c: need(CASE / f"{CASE.name}_{c}.nii.gz") for c in CHANNELS}
    folders = {}
    for c, path in nifti.items():
        data, geom = read_volume(path)
        lps = LPS_TO_RAS @ geom.affine_array
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        folders[c] = write_series(tmp_path / "dicom" / CASE.name / c, data, spacing, lps[:3, 3], lps[:3, :3] / spacing,
                                  description=c.upper())
    seg = Segmenter(ThresholdModel(), ModelSpec("regions", CHANNELS, (64, 64, 64), "native"), overlap=0.0)
    from_nifti = seg.predict(read_files(find_files(nifti, list(CHANNELS))))
    case = read_files(find_files(folders, list(CHANNELS)))
    assert case.case_id == CASE.name and case.geometry.source_format == "dicom"
    from_dicom = seg.predict(case)
    np.testing.assert_array_equal(from_dicom.labels, from_nifti.labels)
    assert np.count_nonzero(from_dicom.labels) > 1000
    export.write_mask(from_dicom.labels, from_dicom.geometry, tmp_path / "mask.nii.gz", "brats2021")
    mask, ref = nib.load(str(tmp_path / "mask.nii.gz")), nib.load(str(nifti["t1ce"]))
    corners = np.array([[i, j, k, 1] for i in (0, 239) for j in (0, 239) for k in (0, 154)], float)
    assert mask.shape == ref.shape
    assert np.abs((mask.affine @ corners.T) - (ref.affine @ corners.T)).max() <= 1e-3
