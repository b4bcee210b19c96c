"""Strict per-case validation: every voxel is read, and every problem is one InputError line.

Checks: missing/duplicate modality files, unreadable/empty/truncated files, >3 dimensions,
grid mismatch between a case's files, qform/sform disagreement, NaN/Inf, all-zero modalities,
label values outside the convention, non-integer labels, mixed conventions, label on another grid.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from brats_seg.errors import InputError
from brats_seg.io.labels import allowed_values, guess_convention
from brats_seg.ingest.layouts import DEFAULT_CONVENTION, CaseSpec
from brats_seg.io.geometry import Geometry, same_grid
from brats_seg.io.volume import read_volume
from brats_seg.io.manifest import relative_inside
from brats_seg.core.hashing import sha256_file

CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # the manifest schema's pattern


def _pick_files(spec: CaseSpec) -> dict[str, tuple[Path, int | None]]:
    missing = [c for c in spec.channels if not spec.images.get(c)]
    if missing:
        found = [c for c in spec.channels if spec.images.get(c)]
        raise InputError(spec.case_id, f"missing modality files: {', '.join(missing)} (found: {', '.join(found) or 'none'}); "
                                       f"expected one file per modality {', '.join(spec.channels)}")
    for channel in spec.channels:
        if len(spec.images[channel]) > 1:
            names = ", ".join(p.name for p, _ in spec.images[channel])
            raise InputError(spec.case_id, f"ambiguous {channel}: several files match ({names}); expected exactly one")
    if len(spec.segs) > 1:
        raise InputError(spec.case_id, f"ambiguous label map: several files match ({', '.join(p.name for p in spec.segs)}); "
                                       "expected at most one")
    return {c: spec.images[c][0] for c in spec.channels}


def _read_channel(path: Path, index: int | None) -> tuple[np.ndarray, Geometry]:
    data, geom = read_volume(path, allow_4d=index is not None)
    if index is not None:
        if data.ndim != 4 or index >= data.shape[3]:
            raise InputError(path, f"expected a 4D image with at least {index + 1} channels, got shape {list(data.shape)}")
        data = data[..., index]
    return data, geom


def _check_intensities(path: Path, data: np.ndarray) -> None:
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise InputError(path, "contains NaN or Inf values; expected finite intensities")
    if not data.any():
        raise InputError(path, "is all zero; expected an image with signal")


def file_record(path: Path, root: Path, geom: Geometry, dtype, index: int | None, where: str) -> dict:
    return {
        "path": relative_inside(root, path, where),
        "sha256": sha256_file(path),
        "shape": list(geom.shape),
        "dtype": str(dtype),
        "spacing": [round(v, 6) for v in geom.spacing],
        "affine": [list(row) for row in geom.affine],
        "orientation": geom.orientation,
        "volume_index": index,
        "qform_code": geom.qform_code,
        "sform_code": geom.sform_code,
    }


def validate_case(spec: CaseSpec, labels: str = "auto") -> dict:
    """Read and check every file of a case; return its raw-manifest entry (without 'root')."""
    if not CASE_ID.fullmatch(spec.case_id):
        raise InputError(spec.case_id, "case id has characters other than letters, digits, '.', '_' and '-' "
                                       "(or starts with one of '._-'); expected a plain id: rename the folder or files")
    chosen = _pick_files(spec)
    records, reference, warnings = {}, None, []
    for channel, (path, index) in chosen.items():
        data, geom = _read_channel(path, index)
        _check_intensities(path, data)
        if reference is None:
            reference = geom
        elif (problem := same_grid(reference, geom)) is not None:
            raise InputError(path, f"{problem} of the case's first image; expected all modalities on one grid")
        records[channel] = file_record(path, spec.root, geom, data.dtype, index, spec.case_id)
    seg, convention = None, None
    if spec.segs:
        seg, convention = _validate_seg(spec, spec.segs[0], reference, labels, warnings)
    return {"id": spec.case_id, "channels": list(spec.channels), "images": records, "seg": seg,
            "label_convention": convention, "layout": spec.layout, "warnings": warnings}


def _validate_seg(spec: CaseSpec, path: Path, reference: Geometry, labels: str, warnings: list) -> tuple[dict, str]:
    data, geom = read_volume(path)
    if (problem := same_grid(reference, geom)) is not None:
        raise InputError(path, f"label map is on another grid: {problem} of the images; expected the images' grid")
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
            raise InputError(path, "label map has non-integer values; expected integer labels")
        warnings.append(f"{path.name}: labels stored as {data.dtype}, read as integers")
    values = {int(v) for v in np.unique(data)}
    convention = _convention_for(path, values, labels, spec.label_convention or DEFAULT_CONVENTION[spec.layout])
    if values == {0}:
        warnings.append(f"{path.name}: label map is empty (no tumour voxels)")
    return file_record(path, spec.root, geom, data.dtype, None, spec.case_id), convention


def _convention_for(path: Path, values: set[int], labels: str, layout_default: str) -> str:
    if {3, 4} <= values:
        raise InputError(path, f"label values {sorted(values)} mix conventions (3 and 4 together); "
                               "expected BraTS 2021 {0,1,2,4} or BraTS 2023 {0,1,2,3}")
    convention = labels if labels != "auto" else guess_convention(values, layout_default)
    if convention is None:
        raise InputError(path, f"label values {sorted(values)} fit no known convention for this layout ({layout_default}); "
                               "expected values of one convention, or pass --labels")
    allowed = allowed_values(convention)
    if not values <= allowed:
        extra = sorted(values - allowed)
        raise InputError(path, f"label values {extra} are outside the {convention} convention; expected {sorted(allowed)}")
    return convention


