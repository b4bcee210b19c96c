"""Reorientation, cropping and resampling, each with the record needed to undo it exactly.

Conventions: arrays are channel-first (C, X, Y, Z); resampling maps voxel edges onto voxel edges
(scipy's grid_mode, torch's align_corners=False), so the field of view is kept exactly and the
inverse resampling lands on the same voxel centres.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

CANONICAL = "RAS"


def canonical_ornt(affine: np.ndarray) -> np.ndarray:
    """Orientation transform (axis permutation + flips) taking file axes to RAS-closest axes."""
    return nib.orientations.io_orientation(affine)


def reorient(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Apply `ornt` to the last three axes (a view; flips and transposes only, no interpolation)."""
    lead = array.ndim - 3
    out = array
    for axis, flip in enumerate(ornt[:, 1]):
        if flip == -1:
            out = np.flip(out, axis=lead + axis)
    perm = list(range(lead)) + [lead + int(i) for i in np.argsort(ornt[:, 0])]
    return np.transpose(out, perm)


def undo_reorient(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Inverse of `reorient` for the same `ornt`."""
    lead = array.ndim - 3
    perm = list(range(lead)) + [lead + int(a) for a in ornt[:, 0]]
    out = np.transpose(array, perm)
    for axis, flip in enumerate(ornt[:, 1]):
        if flip == -1:
            out = np.flip(out, axis=lead + axis)
    return out


def reoriented_affine(affine: np.ndarray, ornt: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return affine @ nib.orientations.inv_ornt_aff(ornt, shape)


def nonzero_box(mask: np.ndarray) -> list[list[int]]:
    """[[lo, hi) per axis] of the nonzero voxels of a 3D mask; the whole volume if none."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1] if hits.size else [0, mask.shape[axis]])
    return box


def union_nonzero_box(arrays: list[np.ndarray]) -> list[list[int]]:
    """Bounding box of voxels nonzero in any of the 3D arrays (the brain, for skull-stripped MRI).

    The arrays' bit patterns are OR-ed (a value is nonzero iff a bit other than a float's sign bit
    is set) and the box read off two projections: measured ~2x faster than OR-ing masks per axis.
    """
    union = _nonzero_bits(arrays)
    plane = union.any(axis=2)
    hits = [np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0)),
            np.flatnonzero(union.any(axis=(0, 1)))]
    if not hits[2].size:
        return [[0, n] for n in union.shape]
    return [[int(h[0]), int(h[-1]) + 1] for h in hits]


def _nonzero_bits(arrays: list[np.ndarray]) -> np.ndarray:
    """An array that is nonzero exactly where any of `arrays` is (!= 0, as numpy compares)."""
    first = arrays[0]
    if any(a.dtype != first.dtype or a.shape != first.shape for a in arrays) or first.dtype.kind not in "iuf":
        union = first != 0
        for array in arrays[1:]:
            union |= array != 0
        return union
    bits = np.dtype(f"u{first.dtype.itemsize}")
    union = np.bitwise_or(first.view(bits), arrays[1].view(bits)) if len(arrays) > 1 else first.view(bits).copy()
    for array in arrays[2:]:
        np.bitwise_or(union, array.view(bits), out=union)
    if first.dtype.kind == "f":  # -0.0 counts as zero
        np.bitwise_and(union, bits.type(np.iinfo(bits).max >> 1), out=union)
    return union


def translation(offset) -> np.ndarray:
    step = np.eye(4)
    step[:3, 3] = offset
    return step


def crop(array: np.ndarray, box: list[list[int]]) -> np.ndarray:
    lead = (slice(None),) * (array.ndim - 3)
    return array[lead + tuple(slice(lo, hi) for lo, hi in box)]


def uncrop(array: np.ndarray, box: list[list[int]], full_shape: tuple[int, ...], fill: float = 0) -> np.ndarray:
    out = np.full(array.shape[:-3] + tuple(full_shape), fill, dtype=array.dtype)
    out[(slice(None),) * (array.ndim - 3) + tuple(slice(lo, hi) for lo, hi in box)] = array
    return out


def target_shape(shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]) -> tuple[int, int, int]:
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def resample_image(array: np.ndarray, shape: tuple[int, int, int], order: int = 1) -> np.ndarray:
    """Resample each channel of (C, X, Y, Z) to `shape` (edge-aligned)."""
    if tuple(array.shape[1:]) == tuple(shape):
        return array
    zoom = [n / o for n, o in zip(shape, array.shape[1:])]
    return np.stack([ndimage.zoom(ch, zoom, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
                     for ch in array]).astype(array.dtype, copy=False)


def resample_labels(labels: np.ndarray, shape: tuple[int, int, int], num_classes: int = 4) -> np.ndarray:
    """Resample a label map by linear interpolation of each class's indicator, then argmax.

    Smoother and closer to the truth than nearest-neighbour, so a down-then-up round trip keeps
    small structures (as nnU-Net does for segmentations).
    """
    if tuple(labels.shape) == tuple(shape):
        return labels
    present = [c for c in range(num_classes) if c == 0 or (labels == c).any()]
    onehot = np.stack([(labels == c).astype(np.float32) for c in present])
    probs = resample_image(onehot, shape, order=1)
    return np.asarray(present, dtype=labels.dtype)[np.argmax(probs, axis=0)]


def resampled_affine(affine: np.ndarray, old_shape, new_shape) -> np.ndarray:
    """Affine of an edge-aligned resampled grid: voxel size scales, origin moves half a voxel."""
    scale = np.asarray(old_shape, float) / np.asarray(new_shape, float)
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = 0.5 * scale - 0.5
    return affine @ step
