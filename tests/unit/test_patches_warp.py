"""Rotated/zoomed patches: the clipped-box reader against a straightforward resampling of the whole
zero-padded volume (scipy map_coordinates), and against the previous whole-box grid_sample reader."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from brats_seg.bench.loader_speed import reference_warped_patch
from brats_seg.seg3d.augment import rotation_matrix
from brats_seg.seg3d.patches import CaseArrays, bounding_box, inside_box, warped_patch

torch.set_num_threads(1)
SHAPE = (20, 22, 24)
PATCH = (9, 10, 11)  # odd and even sizes, not a cube


def _case(rng: np.random.Generator, fortran: bool) -> CaseArrays:
    """float16 image, as stored; Fortran order (X fastest) like preprocessed cases, or C order."""
    image = rng.normal(size=(2, *SHAPE)).astype(np.float16)
    seg = rng.integers(0, 4, size=SHAPE).astype(np.uint8)
    if fortran:
        image = np.moveaxis(np.asfortranarray(np.moveaxis(image, 0, -1)), -1, 0)
        seg = np.asfortranarray(seg)
    return CaseArrays("c", image, seg, {})


def _draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A centre anywhere from well outside to well inside, and a rotation (up to 180 degrees) x zoom."""
    centre = np.array([rng.integers(-6, s + 6) for s in SHAPE])
    matrix = rotation_matrix(rng.uniform(-np.pi, np.pi, size=3)) / rng.uniform(0.6, 1.5)
    return centre, matrix


def _coordinates(centre: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(3, *PATCH) volume coordinates centre + matrix @ (p - P//2)."""
    offsets = np.stack(np.meshgrid(*[np.arange(p) - p // 2 for p in PATCH], indexing="ij"))
    return np.einsum("ij,j...->i...", matrix, offsets) + np.asarray(centre, np.float64)[:, None, None, None]


@pytest.mark.parametrize("fortran", [True, False])
def test_matches_trilinear_resampling_of_the_zero_padded_volume(fortran):
    rng = np.random.default_rng(7)
    case = _case(rng, fortran)
    volume = np.asarray(case.image, np.float64)
    checked_edge = 0
    for _ in range(40):
        centre, matrix = _draw(rng)
        image, label = warped_patch(case, centre, matrix, PATCH)
        coords = _coordinates(centre, matrix)
        for c in range(2):  # grid-constant: interpolation between the edge voxel and the zero outside
            ref = ndimage.map_coordinates(volume[c], coords, order=1, mode="grid-constant", cval=0.0)
            np.testing.assert_allclose(image[c], ref, atol=2e-5, rtol=0)
        ref_label = ndimage.map_coordinates(np.asarray(case.seg), coords, order=0, mode="grid-constant", cval=0)
        tie = (np.abs(coords - np.floor(coords) - 0.5) < 1e-4).any(axis=0)  # nearest may round either way
        assert not ((label != ref_label) & ~tie).any()
        outside = ((coords < 0) | (coords > np.array(SHAPE)[:, None, None, None] - 1)).any(axis=0)
        checked_edge += bool(outside.any() and (image[0][outside] != 0).any())
    assert checked_edge >= 5  # patches hanging over the edge, with values blended at the border, were checked


def test_agrees_with_the_previous_whole_box_reader():
    rng = np.random.default_rng(3)
    case = _case(rng, True)
    for _ in range(20):
        centre, matrix = _draw(rng)
        image, label = warped_patch(case, centre, matrix, PATCH)
        ref_image, ref_label = reference_warped_patch(case, centre, matrix, PATCH)
        np.testing.assert_allclose(image, ref_image, atol=1e-4, rtol=0)
        assert (label != ref_label).mean() < 0.01  # nearest ties only (float32 grid there)


def test_reads_only_the_box_inside_the_volume():
    """A zoomed-out rotated patch's box is clipped to the volume plus one zero layer; a patch that
    misses the volume reads nothing and is all zero."""
    matrix, patch = rotation_matrix(np.deg2rad([30.0, 30.0, 30.0])) / 0.7, (24, 24, 24)
    centre = np.array([10, 11, 12])
    lo, size = bounding_box(centre, matrix, patch)
    assert (np.array(size) > np.array(SHAPE) + 2).all()  # the old reader read far beyond the volume
    clipped_lo, clipped_size = inside_box(centre, matrix, patch, SHAPE)
    np.testing.assert_array_equal(clipped_lo, [-1, -1, -1])
    np.testing.assert_array_equal(clipped_size, np.array(SHAPE) + 2)
    far = np.array([-60, 11, 12])
    assert inside_box(far, matrix, patch, SHAPE) is None
    case = _case(np.random.default_rng(0), True)
    image, label = warped_patch(case, far, matrix, patch)
    assert image.shape == (2, *patch) and not image.any() and not label.any()


def test_unlabelled_case_and_dtypes():
    case = _case(np.random.default_rng(1), True)
    case = CaseArrays(case.id, case.image, None, {})
    image, label = warped_patch(case, np.array([10, 11, 12]), rotation_matrix(np.array([0.3, 0.2, 0.1])), PATCH)
    assert label is None and image.dtype == np.float32 and image.flags.c_contiguous
