"""brats_seg.preprocess.spatial: reorientation (all 48 axis permutations x flips), crop/uncrop,
nonzero boxes, edge-aligned resampling and its affine, target shapes, label resampling."""
from __future__ import annotations

from itertools import permutations, product

import nibabel as nib
import numpy as np
import pytest

from brats_seg.preprocess import spatial

ALL_ORNTS = [np.array([[perm[i], flips[i]] for i in range(3)], dtype=float)
             for perm in permutations(range(3)) for flips in product((1, -1), repeat=3)]
ORNT_IDS = ["".join(f"{int(a)}{'+' if f > 0 else '-'}" for a, f in o) for o in ALL_ORNTS]


def _rotation(deg_x: float, deg_z: float) -> np.ndarray:
    ax, az = np.radians(deg_x), np.radians(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def _affine_for(ornt: np.ndarray, spacing=(1.1, 0.9, 1.7), tilt=(6.0, -8.0)) -> np.ndarray:
    """A file affine whose axis i points (roughly, tilted a few degrees) along RAS axis ornt[i,0] with sign ornt[i,1]."""
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for i, (axis, flip) in enumerate(ornt):
        affine[int(axis), i] = flip * spacing[i]
    affine[:3, :3] = _rotation(*tilt) @ affine[:3, :3]
    affine[:3, 3] = [12.5, -30.25, 7.0]
    return affine


def test_there_are_48_distinct_orientation_transforms():
    assert len({tuple(o.ravel()) for o in ALL_ORNTS}) == 48


@pytest.mark.parametrize("ornt", ALL_ORNTS, ids=ORNT_IDS)
def test_reorient_matches_nibabel_and_undo_reorient_inverts_it(ornt):
    shape = (5, 4, 3)
    vol = np.arange(np.prod(shape)).reshape(shape)
    out = spatial.reorient(vol, ornt)
    np.testing.assert_array_equal(out, nib.orientations.apply_orientation(vol, ornt))
    np.testing.assert_array_equal(spatial.undo_reorient(out, ornt), vol)
    # channel-first (C, X, Y, Z): each channel reoriented alike, the channel axis untouched
    stack = np.stack([vol, -vol, vol * 10])
    out4 = spatial.reorient(stack, ornt)
    assert out4.shape == (3,) + out.shape
    for c in range(3):
        np.testing.assert_array_equal(out4[c], spatial.reorient(stack[c], ornt))
    np.testing.assert_array_equal(spatial.undo_reorient(out4, ornt), stack)


@pytest.mark.parametrize("ornt", ALL_ORNTS, ids=ORNT_IDS)
def test_canonical_orientation_and_affine_keep_every_voxel_at_its_world_point(ornt):
    shape = (6, 5, 4)
    affine = _affine_for(ornt)
    found = spatial.canonical_ornt(affine)
    np.testing.assert_array_equal(found, ornt)  # the tilt is small: the closest axes are ornt's
    vol = np.arange(np.prod(shape)).reshape(shape)
    out = spatial.reorient(vol, found)
    new_affine = spatial.reoriented_affine(affine, found, shape)
    # the new axes point along +R, +A, +S (up to the tilt): a dominant positive diagonal
    rot = new_affine[:3, :3]
    assert np.all(np.argmax(np.abs(rot), axis=0) == [0, 1, 2]) and np.all(np.diag(rot) > 0)
    assert "".join(nib.aff2axcodes(new_affine)) == "RAS"
    # every output voxel holds the input voxel at the same world point
    for p in np.ndindex(out.shape):
        q = np.unravel_index(out[p], shape)
        np.testing.assert_allclose(new_affine @ [*p, 1], affine @ [*q, 1], atol=1e-9)


def test_crop_then_uncrop_restores_the_box_and_fills_the_rest():
    rng = np.random.default_rng(0)
    vol = rng.integers(1, 9, size=(2, 10, 9, 8)).astype(np.int16)
    box = [[1, 7], [0, 9], [3, 5]]
    cropped = spatial.crop(vol, box)
    assert cropped.shape == (2, 6, 9, 2)
    np.testing.assert_array_equal(cropped, vol[:, 1:7, 0:9, 3:5])
    back = spatial.uncrop(cropped, box, (10, 9, 8), fill=-1)
    assert back.shape == vol.shape and back.dtype == vol.dtype
    inside = np.zeros((10, 9, 8), bool)
    inside[1:7, 0:9, 3:5] = True
    np.testing.assert_array_equal(back[:, inside], vol[:, inside])
    assert np.all(back[:, ~inside] == -1)
    # 3D arrays too, default fill 0
    back3 = spatial.uncrop(spatial.crop(vol[0], box), box, (10, 9, 8))
    np.testing.assert_array_equal(back3[inside], vol[0][inside])
    assert not back3[~inside].any()


def test_nonzero_box_is_the_tight_half_open_box():
    mask = np.zeros((10, 9, 8), bool)
    mask[2, 3, 4] = mask[5, 1, 7] = True
    assert spatial.nonzero_box(mask) == [[2, 6], [1, 4], [4, 8]]
    one = np.zeros((10, 9, 8), bool)
    one[0, 8, 0] = True
    assert spatial.nonzero_box(one) == [[0, 1], [8, 9], [0, 1]]
    assert spatial.nonzero_box(np.ones((4, 3, 2), bool)) == [[0, 4], [0, 3], [0, 2]]
    assert spatial.nonzero_box(np.zeros((4, 3, 2), bool)) == [[0, 4], [0, 3], [0, 2]]  # empty: whole volume


def test_union_nonzero_box_covers_every_array():
    a = np.zeros((10, 9, 8), np.float32)
    b = np.zeros((10, 9, 8), np.float32)
    a[3, 4, 5] = 1.0
    b[7, 2, 1] = -2.0  # negative values count as nonzero
    box = spatial.union_nonzero_box([a, b])
    assert box == [[3, 8], [2, 5], [1, 6]]
    assert np.count_nonzero(a) == 1 and np.count_nonzero(b) == 1


@pytest.mark.parametrize("old_shape,new_shape", [
    ((20, 16, 12), (10, 8, 6)),     # 2x down
    ((37, 23, 11), (20, 31, 5)),    # uneven ratios, up and down mixed
    ((9, 9, 9), (18, 18, 18)),      # 2x up
])
def test_resampled_affine_puts_each_resampled_voxel_where_resample_image_sampled_it(old_shape, new_shape):
    """A linear ramp resamples exactly with linear interpolation: each new voxel's value is the
    old-grid coordinate it was sampled at. That coordinate must be where the new affine puts it."""
    affine = _affine_for(ALL_ORNTS[13], spacing=(1.2, 0.8, 2.5))
    ramp = np.stack(np.indices(old_shape, dtype=np.float32))  # channel a holds the axis-a index
    resampled = spatial.resample_image(ramp, new_shape, order=1)
    assert resampled.shape == (3,) + tuple(new_shape) and resampled.dtype == np.float32
    new_affine = spatial.resampled_affine(affine, old_shape, new_shape)
    grid = np.indices(new_shape, dtype=float).reshape(3, -1)
    to_old = np.linalg.inv(affine) @ new_affine
    q = to_old[:3, :3] @ grid + to_old[:3, 3:4]
    interior = np.all((q >= 0) & (q <= np.asarray(old_shape)[:, None] - 1), axis=0)
    assert interior.mean() > 0.5
    values = resampled.reshape(3, -1)
    np.testing.assert_allclose(values[:, interior], q[:, interior], atol=1e-4)
    # the field of view is kept: outer voxel edges coincide in world space
    for lo_old, lo_new in (([-0.5] * 3, [-0.5] * 3), (np.asarray(old_shape) - 0.5, np.asarray(new_shape) - 0.5)):
        np.testing.assert_allclose(new_affine @ [*lo_new, 1], affine @ [*lo_old, 1], atol=1e-9)
    # voxel size scales with the shape ratio
    np.testing.assert_allclose(np.linalg.norm(new_affine[:3, :3], axis=0),
                               np.array([1.2, 0.8, 2.5]) * np.asarray(old_shape) / np.asarray(new_shape))


def test_resample_image_same_shape_is_untouched():
    arr = np.random.default_rng(1).normal(size=(2, 5, 6, 7)).astype(np.float32)
    np.testing.assert_array_equal(spatial.resample_image(arr, (5, 6, 7)), arr)


@pytest.mark.parametrize("shape,spacing,target,expected", [
    ((240, 240, 155), (1, 1, 1), (2, 2, 2), (120, 120, 78)),
    ((100, 50, 33), (1, 1, 1.5), (2, 2, 2), (50, 25, 25)),
    ((48, 48, 32), (1.2, 1.1, 1.3), (1.2, 1.1, 1.3), (48, 48, 32)),
    ((256, 256, 25), (0.78, 0.78, 6.5), (1, 1, 1), (200, 200, 162)),
    ((3, 3, 3), (1, 1, 1), (10, 10, 10), (1, 1, 1)),  # never an empty axis
])
def test_target_shape(shape, spacing, target, expected):
    assert spatial.target_shape(shape, spacing, target) == expected


def test_resample_labels_round_trip_of_grid_aligned_blocks():
    """Along one axis a 2x down-and-up round trip of blocks on even boundaries is exact; in 3D the
    per-class linear interpolation may only shave block corners and edges, never the interior."""
    from scipy import ndimage

    labels = np.zeros((24, 20, 16), np.uint8)
    labels[4:20, 4:16, 2:14] = 2
    labels[8:16, 6:12, 4:10] = 1
    labels[10:14, 8:10, 6:8] = 3
    half_x = spatial.resample_labels(labels, (12, 20, 16))
    assert half_x.dtype == np.uint8 and set(np.unique(half_x)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(spatial.resample_labels(half_x, (24, 20, 16)), labels)
    small = spatial.resample_labels(labels, (12, 10, 8))
    assert small.shape == (12, 10, 8) and set(np.unique(small)) == {0, 1, 2, 3}
    back = spatial.resample_labels(small, (24, 20, 16))
    wrong = back != labels
    edges = np.zeros_like(wrong)
    for c in range(4):  # voxels within one voxel of a label boundary
        region = labels == c
        edges |= region & ~ndimage.binary_erosion(region, np.ones((3, 3, 3)), border_value=1)
    assert not (wrong & ~edges).any()
    assert wrong.sum() < 0.1 * (labels > 0).sum()
    np.testing.assert_array_equal(spatial.resample_labels(labels, labels.shape), labels)


def test_resample_labels_never_invents_classes():
    rng = np.random.default_rng(2)
    labels = np.where(rng.random((15, 13, 11)) < 0.3, 2, 0).astype(np.uint8)
    labels[7, 6, 5] = 3
    out = spatial.resample_labels(labels, (9, 20, 7))
    assert set(np.unique(out)) <= {0, 2, 3}
