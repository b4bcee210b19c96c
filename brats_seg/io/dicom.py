"""DICOM series folders in: one series, read by SimpleITK (GDCM), as the same (array, Geometry) as NIfTI.

A folder is one series' slices as the scanner wrote them (a folder with several series needs
`--series UID`). GDCM sorts the slices by their position along the slice normal; before reading,
every slice's header is checked, so a broken series is one error line instead of a silently
wrong volume: each file an image of a known image SOP class, one slice size, one orientation,
slices stacked along the normal (no gantry tilt), and evenly spaced (a missing slice shows as a
gap twice the others). DICOM's world is LPS like ITK's, so the geometry is built exactly as for
NRRD/MHA (io.volume): LPS -> RAS, and a mask written on it lands on the same physical points.

A series' identity (the raw manifest's sha256) is the hash of its files, in slice order, each
with its name: a slice added, removed, renamed or changed changes it.
"""
from __future__ import annotations

import contextlib
import hashlib
import locale
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from brats_seg.errors import InputError
from brats_seg.io.geometry import LPS_TO_RAS, Geometry, as_affine_tuple

IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image", "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image", "1.2.840.10008.5.1.4.1.1.2": "CT Image",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image", "1.2.840.10008.5.1.4.1.1.128": "PET Image",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
}
UID = re.compile(r"[0-9]+(\.[0-9]+)*")
SPACING_RTOL = 0.01  # slice gaps may differ by 1 % (rounding of positions in the headers)
DIRECTION_TOL = 1e-4
MAX_LISTED = 8  # series named in the several-series error


@dataclass(frozen=True)
class SeriesInfo:
    uid: str
    description: str
    files: tuple[str, ...]  # sorted as GDCM reads them


@dataclass(frozen=True)
class SeriesChoice:
    """`--series`: UIDs for any folder that holds them, and UIDs bound to one channel (t2=UID)."""

    anywhere: tuple[str, ...] = ()
    by_channel: dict[str, str] = field(default_factory=dict)

    def for_channel(self, channel: str) -> tuple[str | None, tuple[str, ...]]:
        return self.by_channel.get(channel), self.anywhere


def parse_series(values: Iterable[str] | None, channels: Sequence[str], alias=None) -> SeriesChoice:
    """`--series UID` or `--series CHANNEL=UID` (repeatable): checked once, here. `alias` maps a
    channel name (e.g. BraTS 2023's t2w) to the pipeline's, or None."""
    anywhere, bound = [], {}
    for text in values or ():
        name, sep, uid = str(text).rpartition("=")
        uid = uid.strip()
        if not UID.fullmatch(uid) or len(uid) > 64:
            raise InputError("--series", f"{text!r} is not a DICOM series UID; expected digits and dots (at most 64), "
                                         "optionally after CHANNEL=, e.g. t2=1.2.840.113619.2.55.3")
        if not sep:
            anywhere.append(uid)
            continue
        channel = (alias(name.strip()) if alias else None) or name.strip().lower()
        if channel not in channels:
            raise InputError("--series", f"{text!r} names channel {name!r}; expected one of {', '.join(channels)}")
        if channel in bound:
            raise InputError("--series", f"gives two series for {channel}; expected at most one per channel")
        bound[channel] = uid
    return SeriesChoice(tuple(dict.fromkeys(anywhere)), bound)


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: 'DICM' after the 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def is_dicom_folder(path: Path, probe: int = 3) -> bool:
    """A folder whose first few visible files are DICOM (cheap: no volume is read)."""
    if not Path(path).is_dir():
        return False
    files = _visible_files(Path(path))[:probe]
    return bool(files) and any(f.suffix.lower() in (".dcm", ".ima") or is_dicom_file(f) for f in files)


def _visible_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as exc:
        raise InputError(folder, f"cannot be listed ({exc.strerror}); expected a readable DICOM series folder")


def _quiet(call, *args):
    """A SimpleITK call without ITK's warnings on stderr (our errors say what is wrong, once), and
    with the process locale kept: GDCM sets LC_ALL to "C", after which Python opens every text file
    as ASCII and the next README, YAML or report with a non-ASCII character fails to read or write."""
    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    with locale_kept():
        try:
            return call(*args)
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(shown)


@contextlib.contextmanager
def locale_kept() -> Iterator[None]:
    """Restore every locale category after the block (GDCM's readers and writers change them)."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        with contextlib.suppress(locale.Error):
            locale.setlocale(locale.LC_ALL, saved)


def list_series(folder: Path) -> list[SeriesInfo]:
    """The image series of `folder` (not its subfolders), each with its description and sorted files."""
    import SimpleITK as sitk

    folder = Path(folder)
    series = []
    for uid in _quiet(sitk.ImageSeriesReader.GetGDCMSeriesIDs, str(folder)):
        files = tuple(_quiet(sitk.ImageSeriesReader.GetGDCMSeriesFileNames, str(folder), uid))
        series.append(SeriesInfo(uid, _header(Path(files[0])).get("0008|103e", "").strip(), files))
    return series


def _no_series(folder: Path) -> InputError:
    files = _visible_files(folder)
    if not files:
        return InputError(folder, "is an empty folder; expected a DICOM series folder (one file per slice)")
    dicom = [f for f in files if is_dicom_file(f)]
    if not dicom:
        return InputError(folder, f"holds {len(files)} file(s) but none is DICOM; expected a DICOM series folder "
                                  "(or a .nii.gz/.nrrd/.mha file)")
    sop = media_sop_class(dicom[0])
    what = f"SOP class {sop} ({IMAGE_SOP_CLASSES.get(sop, 'not an image')})" if sop else "no readable SOP class"
    return InputError(folder, f"holds {len(dicom)} DICOM file(s) but no image series ({dicom[0].name}: {what}); "
                              "expected MR/CT image slices")


def media_sop_class(path: Path) -> str | None:
    """(0002,0002) Media Storage SOP Class UID from the file meta header (always explicit VR little endian)."""
    try:
        with open(path, "rb") as f:  # the file meta header only, not the pixels
            head = f.read(4096)
    except OSError:
        return None
    at = head.find(b"\x02\x00\x02\x00UI", 132)
    if at < 0:
        return None
    length = int.from_bytes(head[at + 6:at + 8], "little")
    return head[at + 8:at + 8 + length].rstrip(b"\x00 ").decode("ascii", "replace") or None


def pick_series(folder: Path, series: list[SeriesInfo], bound: str | None = None,
                anywhere: Sequence[str] = (), channel: str | None = None) -> SeriesInfo:
    """The series to read: the channel's bound UID, else the folder's only series, else the one
    `--series` UID the folder holds; every other case is one error line listing the series."""
    if not series:
        raise _no_series(folder)
    by_uid = {s.uid: s for s in series}
    if bound is not None:
        if bound not in by_uid:
            raise InputError(folder, f"holds no series {bound} (--series {channel}={bound}); it holds {_listing(series)}")
        return by_uid[bound]
    if len(series) == 1:
        return series[0]
    chosen = [u for u in anywhere if u in by_uid]
    if len(chosen) != 1:
        got = f" (--series names {len(chosen)} of them)" if chosen else ""
        if channel is None:  # read without a --series choice (ingest, evaluate): no flag can pick one
            raise InputError(folder, f"holds {len(series)} DICOM series: {_listing(series)}; expected one series "
                                     "per folder: move the others out (predict of one case takes --series UID)")
        raise InputError(folder, f"holds {len(series)} DICOM series{got}: {_listing(series)}; pick one with "
                                 f"--series UID or --series {channel}=UID")
    return by_uid[chosen[0]]


def _listing(series: list[SeriesInfo]) -> str:
    text = ", ".join(f"{s.uid} ({s.description or 'no description'!r}, {len(s.files)} files)"
                     for s in series[:MAX_LISTED])
    return text + (f" and {len(series) - MAX_LISTED} more" if len(series) > MAX_LISTED else "")


def _header(path: Path) -> dict:
    """A slice's header: size, origin, spacing, direction and the metadata tags, without its pixels."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    try:
        _quiet(reader.ReadImageInformation)
    except RuntimeError:
        raise InputError(path, "is not a readable DICOM image; expected the slices of one MR/CT series") from None
    info = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    info.update(size=tuple(reader.GetSize()), origin=np.asarray(reader.GetOrigin()),
                spacing=tuple(reader.GetSpacing()), direction=np.asarray(reader.GetDirection()).reshape(3, 3))
    return info


def check_slices(series: SeriesInfo) -> SeriesInfo:
    """Refuse a series GDCM would read into a wrong volume (see the module docstring); returns it
    with its files sorted by position along the slice normal (GDCM falls back to another order
    when positions repeat, so the order is checked here, not trusted)."""
    headers = [_header(Path(f)) for f in series.files]
    for f, h in zip(series.files, headers):
        sop = h.get("0008|0016", "").strip().rstrip("\x00")
        if sop not in IMAGE_SOP_CLASSES:
            raise InputError(f, f"has SOP class {sop or 'none'}, not an image of {', '.join(sorted(set(IMAGE_SOP_CLASSES.values())))}; "
                                "expected MR/CT image slices")
    sizes = {tuple(h["size"][:2]) for h in headers}
    if len(sizes) > 1:
        counts = ", ".join(f"{a}x{b} ({sum(tuple(h['size'][:2]) == (a, b) for h in headers)} files)" for a, b in sorted(sizes))
        raise InputError(Path(series.files[0]).parent, f"series {series.uid} mixes slice sizes {counts}; expected one "
                                                       "size (a series of one acquisition)")
    if len(headers) == 1:
        if len(headers[0]["size"]) < 3 or headers[0]["size"][2] < 2:
            raise InputError(series.files[0], "is a single 2D slice; expected a 3D series (several slices or one multi-frame file)")
        return series
    return _check_stacking(series, headers)


def _check_stacking(series: SeriesInfo, headers: list[dict]) -> SeriesInfo:
    folder = Path(series.files[0]).parent
    first = headers[0]["direction"]
    if any(not np.allclose(h["direction"][:, :2], first[:, :2], atol=DIRECTION_TOL) for h in headers):
        raise InputError(folder, f"series {series.uid} mixes slice orientations; expected one orientation")
    normal = np.cross(first[:, 0], first[:, 1])
    order = np.argsort(np.stack([h["origin"] for h in headers]) @ normal, kind="stable")
    series = SeriesInfo(series.uid, series.description, tuple(series.files[i] for i in order))
    origins = np.stack([headers[i]["origin"] for i in order])
    along = origins @ normal
    gaps = np.diff(along)
    if np.any(np.abs(gaps) < 1e-3):
        at = int(np.argmin(np.abs(gaps)))
        raise InputError(folder, f"series {series.uid} has two slices at the same position ({Path(series.files[at]).name}, "
                                 f"{Path(series.files[at + 1]).name}); expected one slice per position")
    offsets = origins - np.outer(along, normal)
    if np.abs(offsets - offsets[0]).max() > 0.01 * max(headers[0]["spacing"][:2]) + 1e-3:
        raise InputError(folder, f"series {series.uid} has slices that are not stacked along the slice normal "
                                 "(gantry tilt or shear); expected an orthogonal stack")
    step = float(np.median(np.abs(gaps)))
    odd = np.flatnonzero(np.abs(np.abs(gaps) - step) > SPACING_RTOL * step + 1e-3)
    if odd.size:
        at = int(odd[0])
        raise InputError(folder, f"series {series.uid} has uneven slice spacing: {abs(gaps[at]):.3g} mm between "
                                 f"{Path(series.files[at]).name} and {Path(series.files[at + 1]).name}, {step:.3g} mm "
                                 "elsewhere (a missing slice?); expected evenly spaced slices")
    return series


def read_series(folder: Path, bound: str | None = None, anywhere: Sequence[str] = (),
                channel: str | None = None) -> tuple[np.ndarray, Geometry]:
    """(voxels in (x, y, z) = (column, row, slice) order, geometry) of the chosen series of `folder`."""
    import SimpleITK as sitk

    folder = Path(folder)
    series = check_slices(pick_series(folder, list_series(folder), bound, anywhere, channel))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(series.files))
    try:
        img = _quiet(reader.Execute)
    except RuntimeError as exc:
        line = (str(exc).strip().splitlines() or ["unknown error"])[-1][:160]
        raise InputError(folder, f"series {series.uid} cannot be read ({line}); expected a complete DICOM series")
    return _array_and_geometry(folder, img, series)


def _array_and_geometry(folder: Path, img, series: SeriesInfo) -> tuple[np.ndarray, Geometry]:
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() != 1 or img.GetDimension() != 3:
        raise InputError(folder, f"series {series.uid} has {img.GetNumberOfComponentsPerPixel()}-component pixels in "
                                 f"{img.GetDimension()}D; expected one scalar value per voxel in 3D (not RGB)")
    if img.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InputError(folder, f"series {series.uid} holds complex voxels; expected real-valued intensities")
    data = np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0))
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    geom = Geometry(shape=tuple(int(s) for s in data.shape), affine=as_affine_tuple(LPS_TO_RAS @ lps),
                    source_format="dicom",
                    extra={"series_uid": series.uid, "description": series.description, "files": series.files})
    return data, geom


def series_sha256(files: Sequence[str | Path]) -> str:
    """The identity of a series: its files in slice order, each name and content."""
    h = hashlib.sha256()
    for f in files:
        h.update(Path(f).name.encode() + b"\x00")
        h.update(hashlib.sha256(Path(f).read_bytes()).digest())
    return h.hexdigest()


def read_series_verified(folder: Path, sha256: str, series_uid: str | None = None) -> tuple[np.ndarray, Geometry]:
    """A series a manifest recorded: refused when any of its slices changed since."""
    data, geom = read_series(folder, bound=series_uid)
    if series_sha256(geom.extra["files"]) != sha256:
        raise InputError(folder, "changed since the manifest was written (the series' sha256 differs); re-run ingest")
    return data, geom
