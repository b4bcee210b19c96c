"""Masks and probabilities back on the input's exact grid: shape, affine, qform/sform and codes.

Files go through `io.volume.write_nifti` (the one writer that copies the source geometry);
`nifti_image` builds the same image in memory for the Python API, and a test checks that both
carry identical headers.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from brats_seg.io.labels import CONVENTIONS, from_canonical
from brats_seg.io.geometry import Geometry
from brats_seg.io.volume import write_nifti


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        from brats_seg.errors import InputError

        raise InputError("--label-convention", f"{convention!r} is not known; expected one of {', '.join(CONVENTIONS)}")
    return convention


def to_disk_labels(labels: np.ndarray, convention: str) -> np.ndarray:
    """Canonical labels -> the on-disk values of `convention` (brats2021 writes ET as 4)."""
    return from_canonical(labels, check_convention(convention)).astype(np.uint8, copy=False)


def nifti_image(array: np.ndarray, geometry: Geometry, dtype=np.uint8) -> nib.Nifti1Image:
    """In-memory NIfTI on `geometry` with the header rules of io.volume.write_nifti."""
    if tuple(array.shape[:3]) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match geometry {geometry.shape}")
    affine = geometry.affine_array
    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    img.header.set_data_dtype(dtype)
    from_nifti = geometry.source_format == "nifti"
    sform_code = geometry.sform_code if from_nifti else 1
    qform_code = geometry.qform_code if from_nifti else 1
    qform = np.asarray(geometry.qform) if geometry.qform is not None else affine
    img.set_sform(affine if sform_code > 0 else None, code=sform_code)
    img.set_qform(qform if qform_code > 0 else None, code=qform_code)
    img.header.set_xyzt_units("mm", "sec")
    return img


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
