"""io layer: read_volume / write_nifti keep the exact header geometry; label conventions round-trip."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from brats_seg.errors import InputError
from brats_seg.io.labels import CONVENTIONS, TO_CANONICAL, from_canonical, to_canonical
from brats_seg.io.geometry import LPS_TO_RAS, Geometry, same_grid
from brats_seg.io.nifti import write_nifti
from brats_seg.io.volume import read_volume
from tests.conftest import BRATS_AFFINE, SHAPE, label_map, phantom, save_nifti


def oblique_affine() -> np.ndarray:
    """Rotated about two axes, anisotropic voxels, non-zero origin (a pure rotation: qform can hold it)."""
    a, b = np.deg2rad(17.0), np.deg2rad(-8.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([0.9375, 0.9375, 3.3])
    aff[:3, 3] = (-120.5, 98.25, -60.0)
    return aff


AFFINES = {"brats_lps": BRATS_AFFINE, "oblique": oblique_affine()}
CODES = [(1, 1), (2, 2), (0, 2), (1, 0), (0, 4)]


@pytest.mark.parametrize("affine_name", sorted(AFFINES))
@pytest.mark.parametrize("qcode,scode", CODES)
def test_write_nifti_round_trip_keeps_shape_affine_and_codes(tmp_path, affine_name, qcode, scode):
    affine = AFFINES[affine_name]
    src = save_nifti(tmp_path / "src.nii.gz", phantom(), affine, qform_code=qcode, sform_code=scode)
    data, geom = read_volume(src)
    assert data.shape == SHAPE and geom.shape == SHAPE
    seg = label_map(SHAPE, (1, 2, 3))
    out = write_nifti(seg, geom, tmp_path / "out" / "mask.nii.gz")
    assert sorted(p.name for p in out.parent.iterdir()) == ["mask.nii.gz"]  # no temp file left

    src_img, out_img = nib.load(str(src)), nib.load(str(out))
    assert out_img.shape == SHAPE
    assert out_img.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(out_img.dataobj), seg)
    s_aff, s_code = src_img.header.get_sform(coded=True)
    o_aff, o_code = out_img.header.get_sform(coded=True)
    assert int(o_code) == int(s_code) == scode
    if scode:
        np.testing.assert_array_equal(o_aff, s_aff)  # float32 sform stored back bit for bit
    q_src, q_code_src = src_img.header.get_qform(coded=True)
    q_out, q_code_out = out_img.header.get_qform(coded=True)
    assert int(q_code_out) == int(q_code_src) == qcode
    if qcode:
        np.testing.assert_allclose(q_out, q_src, atol=1e-5)
    # the header geometry the reader sees again is the one it saw first
    _, geom2 = read_volume(out)
    assert geom2.shape == geom.shape
    assert (geom2.qform_code, geom2.sform_code) == (geom.qform_code, geom.sform_code)
    np.testing.assert_allclose(geom2.affine_array, geom.affine_array, atol=1e-5)
    np.testing.assert_allclose(geom2.affine_array, affine, atol=1e-4)
    assert geom2.orientation == geom.orientation


def test_geometry_properties_of_an_oblique_file(tmp_path):
    aff = oblique_affine()
    _, geom = read_volume(save_nifti(tmp_path / "x.nii", phantom(), aff))
    np.testing.assert_allclose(geom.spacing, (0.9375, 0.9375, 3.3), atol=1e-5)
    np.testing.assert_allclose(geom.origin, (-120.5, 98.25, -60.0), atol=1e-4)
    assert geom.orientation == "".join(nib.aff2axcodes(aff))
    np.testing.assert_allclose(np.linalg.norm(geom.direction, axis=0), 1.0, atol=1e-6)
    back = Geometry.from_dict(geom.to_dict())
    assert back == geom


def test_read_volume_reads_the_voxels_exactly(tmp_path):
    data = phantom()
    got, _ = read_volume(save_nifti(tmp_path / "x.nii.gz", data))
    np.testing.assert_array_equal(got, data)


def test_read_volume_dimension_rules(tmp_path):
    trailing = save_nifti(tmp_path / "t.nii.gz", phantom()[..., None])
    assert read_volume(trailing)[0].shape == SHAPE
    four = save_nifti(tmp_path / "f.nii.gz", np.stack([phantom()] * 4, axis=-1))
    assert read_volume(four, allow_4d=True)[0].shape == SHAPE + (4,)
    with pytest.raises(InputError) as info:
        read_volume(four)
    assert info.value.message == "has 4 dimensions [24, 20, 16, 4]; expected a 3D volume"
    flat = save_nifti(tmp_path / "2d.nii.gz", phantom()[..., 0])
    with pytest.raises(InputError):
        read_volume(flat)


def test_read_volume_refuses_missing_and_unsupported_files(tmp_path):
    with pytest.raises(InputError) as info:
        read_volume(tmp_path / "absent.nii.gz")
    assert info.value.where == str(tmp_path / "absent.nii.gz")
    other = tmp_path / "x.png"
    other.write_bytes(b"\x89PNG")
    with pytest.raises(InputError) as info:
        read_volume(other)
    assert "unsupported file type" in info.value.message


def test_write_nifti_refuses_a_mismatched_array(tmp_path):
    _, geom = read_volume(save_nifti(tmp_path / "x.nii.gz", phantom()))
    with pytest.raises(ValueError):
        write_nifti(np.zeros((24, 20, 15), np.uint8), geom, tmp_path / "bad.nii.gz")
    assert not (tmp_path / "bad.nii.gz").exists()


# --- SimpleITK formats --------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_sitk_read_converts_lps_to_ras_and_keeps_voxel_order(tmp_path, ext):
    import SimpleITK as sitk

    xyz = phantom()
    img = sitk.GetImageFromArray(np.ascontiguousarray(xyz.transpose(2, 1, 0)))
    direction = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) @ np.array(
        [[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    img.SetSpacing((0.8, 1.2, 2.5))
    img.SetOrigin((-15.0, 7.5, 42.0))
    img.SetDirection(tuple(direction.ravel()))
    path = tmp_path / f"v{ext}"
    sitk.WriteImage(img, str(path))

    data, geom = read_volume(path)
    assert data.shape == SHAPE
    np.testing.assert_array_equal(data, xyz)
    assert data[3, 5, 7] == img.GetPixel(3, 5, 7)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.array([0.8, 1.2, 2.5])
    lps[:3, 3] = (-15.0, 7.5, 42.0)
    np.testing.assert_allclose(geom.affine_array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, atol=1e-9)
    np.testing.assert_allclose(geom.affine_array, LPS_TO_RAS @ lps, atol=1e-9)
    np.testing.assert_allclose(geom.spacing, (0.8, 1.2, 2.5), atol=1e-9)
    # a world point computed both ways agrees: sitk (LPS) vs our affine (RAS)
    lps_point = np.array(img.TransformIndexToPhysicalPoint((3, 5, 7)))
    ras_point = geom.affine_array @ np.array([3, 5, 7, 1.0])
    np.testing.assert_allclose(ras_point[:3], lps_point * np.array([-1, -1, 1]), atol=1e-6)

    # written back as NIfTI on the same world grid
    out = write_nifti(label_map(), geom, tmp_path / "mask.nii.gz")
    np.testing.assert_allclose(nib.load(str(out)).affine, geom.affine_array, atol=1e-5)


def test_unreadable_sitk_file_is_an_input_error(tmp_path):
    bad = tmp_path / "bad.nrrd"
    bad.write_text("NRRD0004\ntype: nonsense\n\n")
    with pytest.raises(InputError) as info:
        read_volume(bad)
    assert info.value.where == str(bad)
    assert "\n" not in info.value.line()


def test_same_grid_tolerances():
    g = Geometry(shape=SHAPE, affine=tuple(map(tuple, BRATS_AFFINE)))
    near = BRATS_AFFINE.copy()
    near[0, 3] += 1e-5
    assert same_grid(g, Geometry(shape=SHAPE, affine=tuple(map(tuple, near)))) is None
    far = BRATS_AFFINE.copy()
    far[0, 3] += 0.5
    assert same_grid(g, Geometry(shape=SHAPE, affine=tuple(map(tuple, far)))).startswith("origin")
    assert same_grid(g, Geometry(shape=(24, 20, 17), affine=g.affine)).startswith("shape")


# --- label conventions --------------------------------------------------------------------------------

def test_convention_tables_mean_what_the_design_says():
    assert TO_CANONICAL["brats2021"] == {0: 0, 1: 1, 2: 2, 4: 3}
    assert TO_CANONICAL["brats2023"] == {0: 0, 1: 1, 2: 2, 3: 3}
    assert TO_CANONICAL["msd"] == {0: 0, 1: 2, 2: 1, 3: 3}  # MSD: 1 edema, 2 non-enhancing, 3 enhancing


@pytest.mark.parametrize("convention", CONVENTIONS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_label_conventions_round_trip(convention, data):
    disk_values = sorted(TO_CANONICAL[convention])
    disk = np.array(data.draw(st.lists(st.sampled_from(disk_values), min_size=1, max_size=60)), dtype=np.int16)
    canonical = to_canonical(disk, convention)
    assert canonical.dtype == np.uint8 and set(np.unique(canonical)) <= {0, 1, 2, 3}
    no_tumour = [v for v, c in TO_CANONICAL[convention].items() if v and not c]  # BraTS 2024's cavity (4)
    np.testing.assert_array_equal(from_canonical(canonical, convention), np.where(np.isin(disk, no_tumour), 0, disk))
    canon = np.array(data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=60)), dtype=np.uint8)
    np.testing.assert_array_equal(to_canonical(from_canonical(canon, convention), convention), canon)


@pytest.mark.parametrize("convention,bad", [("brats2021", 3), ("brats2023", 4), ("msd", 4)])
def test_to_canonical_refuses_values_outside_the_convention(convention, bad):
    with pytest.raises(ValueError):
        to_canonical(np.array([0, 1, bad]), convention)


def test_to_canonical_keeps_3d_shape():
    seg = label_map(SHAPE, (1, 2, 4))
    out = to_canonical(seg, "brats2021")
    assert out.shape == SHAPE
    assert set(np.unique(out)) == {0, 1, 2, 3}
    assert (out == 3).sum() == (seg == 4).sum()
