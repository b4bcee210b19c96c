"""Writing NIfTI on a source geometry: the one place that says which header a written file carries.

A file read from NIfTI gets back its own qform, sform and their codes; one read from NRRD/MHA gets
both set to its affine with code 1 (scanner). Units are mm and s. `nifti_image` builds the image in
memory (the Python API returns it), `write_nifti` writes the same image atomically.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from brats_seg.core.atomic import atomic_path
from brats_seg.io.geometry import Geometry


def nifti_image(array: np.ndarray, geometry: Geometry, dtype=np.uint8) -> nib.Nifti1Image:
    """`array` (first three axes on `geometry`'s grid) as a NIfTI-1 image with the source's header geometry."""
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


def write_nifti(array: np.ndarray, geometry: Geometry, path: Path, dtype=np.uint8) -> Path:
    """Write `array` on `geometry`'s grid atomically (never a half-written file under `path`)."""
    img = nifti_image(array, geometry, dtype)
    path = Path(path)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path
