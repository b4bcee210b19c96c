"""Strict per-case validation: every voxel is read, and every problem is one InputError line.

Checks: case ids (characters, at most MAX_CASE_ID long), missing/duplicate modality files, unreadable/empty/truncated files, >3 dimensions,
voxel sizes outside the allowed range (--spacing-range), grid mismatch between a case's files, qform/sform disagreement, NaN/Inf, all-zero modalities,
label values outside the convention, non-integer labels, mixed conventions, label on another grid.
A modality may be a DICOM series folder (io.dicom): its record's sha256 is the series' (its slices),
with the series UID beside it. With registration (ingest --register, ingest.register_cases) the
channels may lie on different grids: the case's entry then lists the registered files instead.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from brats_seg.errors import InputError
from brats_seg.io.content import check_intensities, check_label_values, check_single_convention, label_values
from brats_seg.io.labels import guess_convention
from brats_seg.ingest.layouts import DEFAULT_CONVENTION, MAX_CASE_ID, CaseSpec
from brats_seg.io.geometry import VOXEL_SIZE_RANGE_MM, Geometry, check_voxel_size, same_grid
from brats_seg.io.volume import read_volume
from brats_seg.io.manifest import relative_inside
from brats_seg.core.hashing import sha256_file
from brats_seg.io.dicom import series_sha256

if TYPE_CHECKING:
    from brats_seg.ingest.register_cases import CaseRegistration

CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # the manifest schema's pattern


def _pick_files(spec: CaseSpec) -> dict[str, tuple[Path, int | None]]:
    missing = [c for c in spec.channels if not spec.images.get(c)]
    if missing:
        found = [c for c in spec.channels if spec.images.get(c)]
        ignored = f"; ignored: {', '.join(p.name for p in spec.ignored)}" if spec.ignored else ""
        raise InputError(spec.case_id, f"missing modality files: {', '.join(missing)} (found: {', '.join(found) or 'none'}"
                                       f"{ignored}); expected one file per modality {', '.join(spec.channels)}")
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


def file_record(path: Path, root: Path, geom: Geometry, dtype, index: int | None, where: str,
                links: dict[str, str]) -> dict:
    """The raw-manifest record of one file: its path inside `root` as found (through symlinks); each
    symlink on that path that leads out of `root` is added to the case's `links`, with its target."""
    record = {
        "path": relative_inside(root, path, where, links),
        "sha256": series_sha256(geom.extra["files"]) if geom.source_format == "dicom" else sha256_file(path),
        "shape": list(geom.shape),
        "dtype": str(dtype),
        "spacing": [round(v, 6) for v in geom.spacing],
        "affine": [list(row) for row in geom.affine],
        "orientation": geom.orientation,
        "volume_index": index,
        "qform_code": geom.qform_code,
        "sform_code": geom.sform_code,
    }
    if geom.source_format == "dicom":
        record.update(source_format="dicom", series_uid=geom.extra["series_uid"],
                      series_description=geom.extra.get("description", ""), slices=len(geom.extra["files"]))
    return record


def _check_case_id(spec: CaseSpec) -> None:
    if len(spec.case_id) > MAX_CASE_ID:
        raise InputError(spec.origin or spec.case_id, f"case id is {len(spec.case_id)} characters long; expected at "
                                                      f"most {MAX_CASE_ID}: rename the folder or files")
    if not CASE_ID.fullmatch(spec.case_id):
        raise InputError(spec.case_id, "case id has characters other than letters, digits, '.', '_' and '-' "
                                       "(or starts with one of '._-'); expected a plain id: rename the folder or files")


def reference_channel(channels: list[str]) -> str:
    """The channel whose grid the others must share (and are registered onto): t1ce, else the first."""
    return "t1ce" if "t1ce" in channels else channels[0]


def validate_case(spec: CaseSpec, labels: str = "auto", spacing_range: tuple[float, float] = VOXEL_SIZE_RANGE_MM,
                  register: CaseRegistration | None = None) -> dict:
    """Read and check every file of a case; return its raw-manifest entry, whose 'root' is the folder
    its paths are relative to (the stage turns it into the manifest's root index)."""
    _check_case_id(spec)
    chosen = _pick_files(spec)
    warnings = [f"{p.name}: neither one of the channels {', '.join(spec.channels)} nor a label map; ignored"
                for p in spec.ignored]
    read = {}
    for channel, (path, index) in chosen.items():
        data, geom = _read_channel(path, index)
        check_voxel_size(path, geom.spacing, *spacing_range)
        check_intensities(path, data)
        read[channel] = (path, index, data, geom)
    ref = reference_channel(list(chosen))
    root, seg_path, links = spec.root, (spec.segs[0] if spec.segs else None), {}
    if register is None:
        _check_one_grid(read, ref)
    else:
        read, seg_path, root, note = register.apply(spec.case_id, read, ref, seg_path)
        warnings.append(note)
    records = {c: file_record(path, root, geom, data.dtype, index, spec.case_id, links)
               for c, (path, index, data, geom) in read.items()}
    seg, convention = None, None
    if seg_path is not None:
        seg, convention = _validate_seg(spec, seg_path, read[ref][3], labels, warnings, links, root)
    entry = {"id": spec.case_id, "root": str(root), "channels": list(spec.channels), "images": records, "seg": seg,
             "label_convention": convention, "layout": spec.layout, "warnings": warnings}
    return {**entry, "links": links} if links else entry


def _check_one_grid(read: dict, ref: str) -> None:
    """Every channel on the first one's grid; the hint names --register (which registers onto `ref`)."""
    reference = next(iter(read.values()))[3]
    for channel, (path, _, _, geom) in read.items():
        if (problem := same_grid(reference, geom)) is not None:
            raise InputError(path, f"{problem} of the case's first image; expected all modalities on one grid "
                                   f"(or pass --register to register them rigidly onto the {ref})")


def _validate_seg(spec: CaseSpec, path: Path, reference: Geometry, labels: str, warnings: list,
                  links: dict[str, str], root: Path) -> tuple[dict, str]:
    data, geom = read_volume(path)
    if (problem := same_grid(reference, geom)) is not None:
        raise InputError(path, f"label map is on another grid: {problem} of the images; expected the images' grid")
    values = label_values(path, data)
    if np.issubdtype(data.dtype, np.floating):
        warnings.append(f"{path.name}: labels stored as {data.dtype}, read as integers")
    convention = _convention_for(path, values, labels, spec.label_convention or DEFAULT_CONVENTION[spec.layout])
    if values == {0}:
        warnings.append(f"{path.name}: label map is empty (no tumour voxels)")
    return file_record(path, root, geom, data.dtype, None, spec.case_id, links), convention


def _convention_for(path: Path, values: set[int], labels: str, layout_default: str) -> str:
    if labels == "auto":  # a declared convention is checked by check_label_values below (2024 holds 3 and 4)
        check_single_convention(path, values)
    convention = labels if labels != "auto" else guess_convention(values, layout_default)
    if convention is None:
        raise InputError(path, f"label values {sorted(values)} fit no known convention for this layout ({layout_default}); "
                               "expected values of one convention, or pass --labels")
    check_label_values(path, values, convention)
    return convention


