"""Inference inputs: find and read a case's images, then apply the run's preprocessing in memory.

The chain is preprocessing's own (`preprocess.case.prepare_arrays`: crop to the brain, reorient,
z-score, resample), so the network sees what it saw in training; nothing is written to disk. The
returned entry carries the `source` record that `preprocess.inverse` uses to go back exactly.

Any image path may be a DICOM series folder (io.dicom; `series` picks one where a folder holds
several). The images must share one grid, unless `register` is given: then every channel is
rigidly registered onto the reference channel (t1ce; preprocess.register) and resampled there, and
the record of what was done travels with the CaseInput (its `registration`, for the case JSON).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from brats_seg.errors import InputError
from brats_seg.io.content import check_intensities
from brats_seg.io.dicom import SeriesChoice, read_series
from brats_seg.io.geometry import VOXEL_SIZE_RANGE_MM, Geometry, check_voxel_size, same_grid
from brats_seg.io.volume import read_volume

if TYPE_CHECKING:
    from brats_seg.preprocess.register import RegisterConfig

DEFAULT_CONVENTION = "brats2021"
BRATS2023_NAMES = {"t1n", "t1c", "t2w", "t2f"}


@dataclass
class CaseInput:
    """A case's images in the model's channel order, on one grid, as read from disk (or given)."""

    case_id: str
    images: list[np.ndarray]
    geometry: Geometry
    channels: list[str]
    label_convention: str = DEFAULT_CONVENTION  # the convention masks are written in by default
    inputs_sha256: dict[str, str] = field(default_factory=dict)
    registration: dict | None = None  # preprocess.register's record, when the channels were registered

    def channel(self, name: str) -> np.ndarray | None:
        return self.images[self.channels.index(name)] if name in self.channels else None


@dataclass(frozen=True)
class CaseFiles:
    """Where a case's images are, found before anything is read (so outputs can be checked against them)."""

    case_id: str
    paths: list[Path]  # in `channels` order
    channels: list[str]
    convention: str  # the convention masks are written in by default


def find_files(files: Mapping[str, str | Path], channels: list[str], case_id: str | None = None) -> CaseFiles:
    """Images given as {channel: path}; BraTS 2023 names (t1n, t1c, t2w, t2f) are accepted as aliases."""
    from brats_seg.ingest.layouts import channel_of

    by_channel = {(channel_of(str(k)) or str(k).lower()): Path(v) for k, v in files.items()}
    missing = [c for c in channels if c not in by_channel]
    if missing:
        raise InputError(case_id or "input", f"missing images for channels {missing}; the model expects {channels}")
    convention = "brats2023" if {str(k).lower() for k in files} & BRATS2023_NAMES else DEFAULT_CONVENTION
    first = by_channel[channels[0]]
    return CaseFiles(case_id or _case_id(first), [by_channel[c] for c in channels], list(channels), convention)


def find_case_dir(folder: str | Path, channels: list[str]) -> CaseFiles:
    """One case folder in a BraTS 2018-2023 layout (file names tell the channels)."""
    from brats_seg.ingest.layouts import DEFAULT_CONVENTION as LAYOUT_CONVENTION, discover

    folder = Path(folder)
    specs = discover(folder, "auto", tuple(channels))
    if len(specs) != 1:
        raise InputError(folder, f"holds {len(specs)} cases; expected one case folder (use --manifest for many)")
    spec = specs[0]
    paths = []
    for c in channels:
        found = spec.images.get(c, [])
        if len(found) != 1:
            what = "no file" if not found else f"{len(found)} files ({', '.join(p.name for p, _ in found)})"
            raise InputError(folder, f"{what} for channel {c}; expected exactly one <case>_{c} image")
        paths.append(found[0][0])
    return CaseFiles(spec.case_id, paths, list(channels), LAYOUT_CONVENTION.get(spec.layout, DEFAULT_CONVENTION))


def from_files(files: Mapping[str, str | Path], channels: list[str], case_id: str | None = None,
               spacing_range: tuple[float, float] = VOXEL_SIZE_RANGE_MM) -> CaseInput:
    """Read the images of {channel: path} (see find_files)."""
    return read_files(find_files(files, channels, case_id), spacing_range)


def from_case_dir(folder: str | Path, channels: list[str],
                  spacing_range: tuple[float, float] = VOXEL_SIZE_RANGE_MM) -> CaseInput:
    """Read the images of one case folder (see find_case_dir)."""
    return read_files(find_case_dir(folder, channels), spacing_range)


def from_entry(entry: dict, root: Path, channels: list[str],
               spacing_range: tuple[float, float] = VOXEL_SIZE_RANGE_MM) -> CaseInput:
    """A raw-manifest case, read as preprocessing reads it (sha256, shape, volume_index and ingest's
    content rules checked again); the label map is not read."""
    from brats_seg.preprocess.case import load_case

    missing = [c for c in channels if c not in entry["images"]]
    if missing:
        raise InputError(entry["id"], f"has no images for channels {missing}; the model expects {channels}")
    images, _, geometry = load_case({**entry, "channels": list(channels), "seg": None}, root, spacing_range)
    return CaseInput(entry["id"], images, geometry, list(channels), entry_convention(entry),
                     {c: entry["images"][c]["sha256"] for c in channels})


def entry_convention(entry: dict) -> str:
    """A raw case's label convention: its label map's, else its layout's default."""
    from brats_seg.ingest.layouts import DEFAULT_CONVENTION as LAYOUT_CONVENTION

    return entry.get("label_convention") or LAYOUT_CONVENTION.get(entry.get("layout", ""), DEFAULT_CONVENTION)


def read_files(files: CaseFiles, spacing_range: tuple[float, float] = VOXEL_SIZE_RANGE_MM,
               series: SeriesChoice | None = None, register: RegisterConfig | None = None) -> CaseInput:
    """Read a case's images, held to ingest's rules (finite, some signal, plausible voxel size), on
    the reference channel's grid (t1ce, else the first): one grid already, or registered onto it."""
    from brats_seg.infer.missing import reference_channel

    series = series or SeriesChoice()
    images, geometries = [], []
    for channel, path in zip(files.channels, files.paths):
        data, geom = read_image(path, channel, series)
        check_intensities(path, data)
        check_voxel_size(path, geom.spacing, *spacing_range)
        images.append(data)
        geometries.append(geom)
    _check_series_used(series, geometries)
    ref = files.channels.index(reference_channel(files.channels))
    if register is not None:
        from brats_seg.preprocess.register import register_case

        images, reference, record = register_case(images, geometries, list(files.channels), files.paths, register)
        return CaseInput(files.case_id, images, reference, list(files.channels), files.convention, registration=record)
    for channel, path, geom in zip(files.channels, files.paths, geometries):
        if (problem := same_grid(geometries[ref], geom)) is not None:
            raise InputError(path, f"{problem} of the {files.channels[ref]} image {files.paths[ref].name}; expected all "
                                   f"images of a case on one grid (or pass --register to register the series rigidly "
                                   f"onto the {files.channels[ref]} and predict on its grid)")
    return CaseInput(files.case_id, images, geometries[ref], list(files.channels), files.convention)


def read_image(path: Path, channel: str, series: SeriesChoice) -> tuple[np.ndarray, Geometry]:
    """One channel's image: a volume file, or the chosen series of a DICOM folder."""
    bound, anywhere = series.for_channel(channel)
    if Path(path).is_dir():
        return read_series(path, bound, anywhere, channel)
    if bound is not None:
        raise InputError("--series", f"{channel}={bound} names a DICOM series, but the {channel} image {path} is a file, "
                                     "not a DICOM folder; drop it or give the series' folder")
    return read_volume(path)


def _check_series_used(series: SeriesChoice, geometries: list[Geometry]) -> None:
    """A --series UID that no folder holds is a typo, not something to ignore."""
    read = {g.extra.get("series_uid") for g in geometries if g.source_format == "dicom"}
    unused = sorted(uid for uid in series.anywhere if uid not in read)
    if unused:
        raise InputError("--series", f"{unused[0]} is not a series that was read; expected the UID of one series in a "
                                     "folder of several (the error for that folder lists them)")


def _case_id(path: Path) -> str:
    """'BraTS-001_t1.nii.gz' -> 'BraTS-001' (drops the extension and the channel token)."""
    import re

    from brats_seg.ingest.layouts import channel_of

    stem = re.sub(r"\.(nii\.gz|nii|nrrd|nhdr|mha|mhd)$", "", path.name, flags=re.I)
    if channel_of(stem) and path.parent.name:  # 'P17/t1ce/' (a DICOM folder) or 'P17/t1.nii.gz': the patient's folder
        return path.parent.name
    return re.sub(r"[_\-.](t1|t1ce|t1c|t1n|t1gd|t2|t2w|t2f|flair)$", "", stem, flags=re.I) or stem


def prepare(case: CaseInput, spacing: str | tuple[float, float, float],
            max_voxels: int | None = None) -> tuple[np.ndarray, dict]:
    """(image (C, X, Y, Z) float32 in preprocessed space, entry with the `source` record for inverse.py);
    max_voxels bounds the resampled grid per channel (None: preprocessing's MAX_GRID_VOXELS)."""
    from brats_seg.preprocess.case import MAX_GRID_VOXELS, PreprocessConfig, prepare_arrays

    cfg = PreprocessConfig(spacing=spacing, dtype="float32", max_voxels=max_voxels or MAX_GRID_VOXELS)
    prepared = prepare_arrays(case.images, None, case.geometry, case.channels, cfg, case_id=case.case_id)
    image = np.moveaxis(prepared.image, -1, 0)
    entry = {"id": case.case_id, "channels": list(case.channels), "shape": list(image.shape[1:]),
             "affine": prepared.affine.tolist(), "norm": prepared.norm, "source": prepared.source}
    return image, entry
