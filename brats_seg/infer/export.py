"""Masks and probabilities back on the input's exact grid: shape, affine, qform/sform and codes.

Files go through `io.nifti.write_nifti` and in-memory images (the Python API) through
`io.nifti.nifti_image`, the one place for the header rules; a test checks that both carry
identical headers.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from brats_seg.io.geometry import Geometry
from brats_seg.io.labels import CONVENTIONS, from_canonical
from brats_seg.io.nifti import nifti_image, write_nifti


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        from brats_seg.errors import InputError

        raise InputError("--label-convention", f"{convention!r} is not known; expected one of {', '.join(CONVENTIONS)}")
    return convention


def to_disk_labels(labels: np.ndarray, convention: str) -> np.ndarray:
    """Canonical labels -> the on-disk values of `convention` (brats2021 writes ET as 4)."""
    return from_canonical(labels, check_convention(convention)).astype(np.uint8, copy=False)


def mask_image(labels: np.ndarray, geometry: Geometry, convention: str) -> nib.Nifti1Image:
    return nifti_image(to_disk_labels(labels, convention), geometry, np.uint8)


def probability_image(probs: np.ndarray, geometry: Geometry) -> nib.Nifti1Image:
    """(K, X, Y, Z) -> 4D float32 NIfTI (X, Y, Z, K)."""
    return nifti_image(np.moveaxis(np.asarray(probs, dtype=np.float32), 0, -1), geometry, np.float32)


def write_mask(labels: np.ndarray, geometry: Geometry, path: Path, convention: str) -> Path:
    """Canonical labels -> uint8 NIfTI in `convention`, atomically."""
    return write_nifti(to_disk_labels(labels, convention), geometry, Path(path), dtype=np.uint8)


def write_probabilities(probs: np.ndarray, geometry: Geometry, path: Path) -> Path:
    """(K, X, Y, Z) probabilities -> 4D float32 NIfTI, channels last."""
    return write_nifti(np.moveaxis(np.asarray(probs, dtype=np.float32), 0, -1), geometry, Path(path), dtype=np.float32)


def write_uncertainty(std: np.ndarray, geometry: Geometry, path: Path) -> Path:
    """(3, X, Y, Z) per-region TTA standard deviation (WT, TC, ET) -> 4D float32 NIfTI on the input
    grid, channels last like the probabilities (the same header path as the mask)."""
    return write_probabilities(std, geometry, path)
