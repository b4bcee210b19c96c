"""What a volume must hold, wherever it is read: ingest's content rules, applied again by every reader.

A raw manifest's sha256 proves a file unchanged since the manifest was written, not that ingest
ever saw it: a file swapped in together with its own sha256 passes the hash check. So preprocess,
predict and evaluate run these same checks on what they read (NaN/Inf, an all-zero modality,
label values outside the convention, non-integer labels, voxel sizes outside the plausible range,
a shape other than the manifest records, a volume_index on a file that has no such volume).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from brats_seg.errors import InputError
from brats_seg.io.geometry import VOXEL_SIZE_RANGE_MM, Geometry, check_voxel_size
from brats_seg.io.labels import allowed_values
from brats_seg.io.manifest import resolve_inside
from brats_seg.io.volume import read_volume_verified, select_volume


def check_intensities(path: Path, data: np.ndarray) -> None:
    """Finite intensities and some signal: NaN/Inf poison every statistic, an all-zero modality has none."""
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise InputError(path, "contains NaN or Inf values; expected finite intensities")
    if not data.any():
        raise InputError(path, "is all zero; expected an image with signal")


def label_values(path: Path, data: np.ndarray) -> set[int]:
    """The values of a label map, which must be integers (float storage is fine when integral)."""
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
            raise InputError(path, "label map has non-integer values; expected integer labels")
    if data.dtype == np.uint8:  # the common case: one counting pass instead of a sort
        return {int(v) for v in np.flatnonzero(np.bincount(data.reshape(-1, order="A")))}
    return {int(v) for v in np.unique(data)}


def check_single_convention(path: Path, values: set[int]) -> None:
    """3 (BraTS 2023 ET) and 4 (BraTS 2021 ET) together belong to no convention."""
    if {3, 4} <= values:
        raise InputError(path, f"label values {sorted(values)} mix conventions (3 and 4 together); "
                               "expected BraTS 2021 {0,1,2,4} or BraTS 2023 {0,1,2,3}, or declare BraTS 2024 "
                               "post-treatment labels (4 = resection cavity) with --labels brats2024")


def check_label_values(path: Path, values: set[int], convention: str) -> None:
    """Every value is a label of `convention`."""
    allowed = allowed_values(convention)
    if not {3, 4} <= allowed:  # BraTS 2024 post-treatment holds both: 3 ET, 4 resection cavity
        check_single_convention(path, values)
    if not values <= allowed:
        extra = sorted(values - allowed)
        raise InputError(path, f"label values {extra} are outside the {convention} convention; expected {sorted(allowed)}")


def check_label_map(path: Path, data: np.ndarray, convention: str) -> None:
    """A label map holds integer labels of `convention` only."""
    check_label_values(path, label_values(path, data), convention)


def read_record(root: Path, record: dict, where: str, spacing_range: Sequence[float] | None = VOXEL_SIZE_RANGE_MM,
                links: Mapping[str, str] | None = None) -> tuple[Path, np.ndarray, Geometry]:
    """(path, voxels, geometry) of one raw-manifest file record, verified against its sha256, its
    recorded shape, its volume_index (a 4D file's volume) and the plausible voxel sizes (None: a
    reader that never resamples skips that check); `links`: the case's recorded symlinks
    (io.manifest.resolve_inside)."""
    path = resolve_inside(root, record["path"], where, links)
    index = record.get("volume_index")
    data, geom = read_volume_verified(path, record["sha256"], allow_4d=index is not None)
    data = select_volume(path, data, index)
    if list(geom.shape) != list(record["shape"]):
        raise InputError(path, f"has shape {list(geom.shape)} but the manifest records {list(record['shape'])}; "
                               "expected the file ingest saw (re-run ingest)")
    if spacing_range is not None:
        check_voxel_size(path, geom.spacing, *spacing_range)
    return path, data, geom


def read_image_record(root: Path, record: dict, where: str, spacing_range: Sequence[float] = VOXEL_SIZE_RANGE_MM,
                      links: Mapping[str, str] | None = None) -> tuple[Path, np.ndarray, Geometry]:
    """An image file of a raw case, held to ingest's intensity rules."""
    path, data, geom = read_record(root, record, where, spacing_range, links)
    check_intensities(path, data)
    return path, data, geom


def read_label_record(root: Path, record: dict, convention: str, where: str,
                      spacing_range: Sequence[float] | None = VOXEL_SIZE_RANGE_MM,
                      links: Mapping[str, str] | None = None) -> tuple[Path, np.ndarray, Geometry]:
    """A label map of a raw case, held to ingest's label rules for the case's recorded convention."""
    path, data, geom = read_record(root, record, where, spacing_range, links)
    check_label_map(path, data, convention)
    return path, data, geom


def record_paths(case: dict, root: Path) -> list[Path]:
    """The files a raw case lists (images, then the label map), unresolved: what an output must not replace."""
    records = [*case["images"].values(), *([case["seg"]] if case.get("seg") else [])]
    return [Path(root) / rec["path"] for rec in records]
