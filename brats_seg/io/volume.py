"""Read any supported volume fully into memory (never lazily), with the geometry it sits on.

NIfTI goes through nibabel; NRRD and MHA/MHD through SimpleITK (LPS world converted to RAS); a
folder is a DICOM series (io.dicom, SimpleITK's GDCM reader, the same LPS -> RAS path).
Every failure a user can cause becomes an InputError naming the file. Writing NIfTI back on a
geometry is io.nifti.
"""
from __future__ import annotations

import logging
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from brats_seg.core.inputfile import require_regular_file
from brats_seg.errors import InputError
from brats_seg.io.geometry import LPS_TO_RAS, Geometry, as_affine_tuple

# nibabel logs header problems itself; we report them as one InputError line instead.
logging.getLogger("nibabel.global").setLevel(logging.CRITICAL)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
QFORM_SFORM_TOL_MM = 1e-3


def volume_format(path: Path) -> str | None:
    name = Path(path).name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(SITK_SUFFIXES):
        return "sitk"
    return None


def read_volume(path: Path, allow_4d: bool = False) -> tuple[np.ndarray, Geometry]:
    """Return (array in file axis order, geometry). 4D arrays only with allow_4d (channels last).
    A folder is a DICOM series (io.dicom; a folder of several series needs its --series choice)."""
    path = Path(path)
    if path.is_dir():
        from brats_seg.io.dicom import read_series

        return read_series(path)
    require_regular_file(path, "file not found", "a volume file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes); expected a volume file")
    fmt = volume_format(path)
    if fmt == "nifti":
        data, geom = _read_nifti(path)
    elif fmt == "sitk":
        data, geom = _read_sitk(path)
    else:
        raise InputError(path, "unsupported file type; expected .nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd")
    check_value_range(path, data)
    return _check_dims(path, data, allow_4d), geom


def _check_dims(path: Path, data: np.ndarray, allow_4d: bool) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]  # a trailing size-1 axis (common in old NIfTI writers) is harmless
    if data.ndim == 4 and allow_4d:
        return data
    if data.ndim != 3:
        raise InputError(path, f"has {data.ndim} dimensions {list(data.shape)}; expected a 3D volume")
    if min(data.shape) < 1:
        raise InputError(path, f"has an empty axis, shape {list(data.shape)}; expected every axis >= 1")
    return data


def _read_nifti(path: Path, blob: bytes | None = None) -> tuple[np.ndarray, Geometry]:
    """Decode a whole NIfTI file from memory; the gzip CRC and length are checked, so a damaged
    or cut .nii.gz is refused even when the voxel bytes themselves are all present."""
    blob = path.read_bytes() if blob is None else blob
    try:
        raw = _gunzip(blob) if path.name.lower().endswith(".gz") else blob
        img = _nifti_from_bytes(raw)
        check_voxel_type(path, img.header.get_data_dtype())
        data = _voxels(img, raw)
    except (zlib.error, ValueError, EOFError, OSError, OverflowError, MemoryError, nib.filebasedimages.ImageFileError,
            nib.spatialimages.HeaderDataError, nib.wrapstruct.WrapStructError) as exc:
        raise InputError(path, f"unreadable or truncated NIfTI ({_short(exc)}); expected a complete .nii/.nii.gz file")
    try:
        return data, _nifti_geometry(path, img, data.shape[:3])
    except (ValueError, np.linalg.LinAlgError) as exc:  # e.g. an impossible qform quaternion
        raise InputError(path, f"header geometry is invalid ({_short(exc)}); expected a valid qform/sform")


def _voxels(img, raw: bytes) -> np.ndarray:
    """The voxel array as a read-only view of the decompressed bytes (no copy), scaled if the header
    says so; nibabel's own reader copies the whole volume once more through a BytesIO.

    Scaling: nibabel moves scl_slope/scl_inter out of the header into the array proxy when it
    reads a file (the header then reports none), so the proxy is what says whether to scale."""
    hdr = img.header
    dtype, shape = hdr.get_data_dtype(), hdr.get_data_shape()
    # the offset nibabel reads from (the stored vox_offset; in memory nibabel's header then says 0)
    count, offset = int(np.prod(shape)), int(getattr(img.dataobj, "offset", hdr.get_data_offset()))
    header_end = 544 if isinstance(img, nib.Nifti2Image) else 352  # fixed header + 4 extension bytes
    if offset < header_end:  # nibabel would read the header's own bytes as voxels
        raise ValueError(f"vox_offset {offset} lies inside the {header_end}-byte header; expected >= {header_end}")
    slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
    if slope != 1.0 or inter != 0.0:
        return np.asanyarray(img.dataobj)  # nibabel applies slope/intercept (NIfTI's rules) and the dtype
    if offset + count * dtype.itemsize > len(raw) or dtype.hasobject:
        return np.asanyarray(img.dataobj)  # let nibabel raise (or cope) for odd files
    return np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape, order="F")


def check_voxel_type(path: Path, dtype: np.dtype) -> None:
    """One scalar, real number per voxel: complex and RGB voxels have no intensity to normalise."""
    dtype = np.dtype(dtype)
    if dtype.names is not None or dtype.subdtype is not None:
        raise InputError(path, f"holds {len(dtype.names or (0, 0, 0))}-component (RGB/vector) voxels ({dtype}); "
                               "expected one scalar intensity per voxel")
    if dtype.kind == "c":
        raise InputError(path, f"holds complex voxels ({dtype}); expected real-valued intensities (e.g. magnitude)")
    if dtype.kind not in "biuf":
        raise InputError(path, f"holds voxels of type {dtype}; expected integers or floats")


def check_value_range(path: Path, data: np.ndarray) -> None:
    """Values a float32 pipeline can hold: float64 files beyond float32's range would become inf."""
    if data.dtype.kind == "f" and data.dtype.itemsize > 4 and data.size:
        finite = np.abs(data[np.isfinite(data)])
        if finite.size and float(finite.max()) > float(np.finfo(np.float32).max):
            raise InputError(path, f"holds values up to {float(finite.max()):.3g}, beyond float32's range "
                                   f"(±{float(np.finfo(np.float32).max):.3g}); expected intensities a float32 can hold")


def select_volume(path: Path, data: np.ndarray, index: int | None) -> np.ndarray:
    """Volume `index` of a 4D file (MSD stacks the modalities in one file); None: the file itself."""
    if index is None:
        return data
    if data.ndim != 4 or not 0 <= index < data.shape[3]:
        raise InputError(path, f"volume_index {index} names no volume of this file (shape {list(data.shape)}); "
                               f"expected a 4D file with at least {index + 1} volumes, or volume_index null")
    return data[..., index]


def _nifti_from_bytes(raw: bytes):
    if len(raw) >= 4 and int.from_bytes(raw[:4], "little") in (540, 540 << 24):  # sizeof_hdr of NIfTI-2
        return nib.Nifti2Image.from_bytes(raw)
    return nib.Nifti1Image.from_bytes(raw)


def _nifti_geometry(path: Path, img, shape) -> Geometry:
    hdr = img.header
    qform, qcode = hdr.get_qform(coded=True)
    sform, scode = hdr.get_sform(coded=True)
    qcode, scode = int(qcode or 0), int(scode or 0)
    if qcode > 0 and scode > 0 and not np.allclose(qform, sform, atol=QFORM_SFORM_TOL_MM):
        raise InputError(path, "qform and sform are both set and disagree; expected one geometry "
                               "(fix the header, e.g. copy the sform into the qform)")
    affine = sform if scode > 0 else (qform if qcode > 0 else img.affine)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(path, "affine is singular or not finite; expected a valid voxel-to-world matrix")
    return Geometry(
        shape=tuple(int(s) for s in shape), affine=as_affine_tuple(affine),
        qform=as_affine_tuple(qform) if qcode > 0 else None,
        qform_code=qcode, sform_code=scode, source_format="nifti",
    )


def _read_sitk(path: Path) -> tuple[np.ndarray, Geometry]:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(path, f"unreadable image ({_short(exc)})")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, "has vector pixels; expected one scalar value per voxel")
    if img.GetDimension() != 3:
        raise InputError(path, f"has {img.GetDimension()} dimensions; expected a 3D volume")
    data = sitk.GetArrayFromImage(img).transpose(2, 1, 0)  # (z, y, x) -> (x, y, z) like nibabel
    check_voxel_type(path, data.dtype)
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    affine = LPS_TO_RAS @ lps
    geom = Geometry(shape=tuple(int(s) for s in data.shape), affine=as_affine_tuple(affine),
                    source_format=path.suffix.lower().lstrip("."))
    return np.ascontiguousarray(data), geom


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def read_volume_verified(path: Path, sha256: str, allow_4d: bool = False) -> tuple[np.ndarray, Geometry]:
    """Read a volume whose manifest recorded `sha256`; refuse it if the file changed since.

    NIfTI is read once into memory, hashed and decompressed in one shot (faster than nibabel's
    streaming gzip reader, and the bytes hashed are the bytes decoded).
    """
    import hashlib

    path = Path(path)
    if path.is_dir():  # a DICOM series folder: its sha256 is that of its slices (io.dicom.series_sha256)
        from brats_seg.io.dicom import read_series_verified

        return read_series_verified(path, sha256)
    require_regular_file(path, "file not found; expected the file the manifest lists (moved or deleted?)",
                         "the file the manifest lists")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != sha256:
        raise InputError(path, "changed since the manifest was written (sha256 differs); re-run ingest")
    if volume_format(path) != "nifti":
        return read_volume(path, allow_4d)
    data, geom = _read_nifti(path, blob)
    check_value_range(path, data)
    return _check_dims(path, data, allow_4d), geom


MAX_FILE_VOXELS = 1 << 30  # ~1.07e9 voxels (1024^3): beyond any MR volume; would need > 4 GB as float32
HEADER_SLACK = 1 << 20  # bytes a header may declare in extensions beyond its fixed part


def declared_nifti_bytes(head: bytes) -> int | None:
    """Bytes a NIfTI file's header says the file holds (vox_offset + voxels x bitpix), or None when
    the first bytes are not a NIfTI-1/2 header (nibabel then says what is wrong)."""
    if len(head) < 348:
        return None
    for order in "<>":
        sizeof = int(np.frombuffer(head[:4], dtype=f"{order}i4")[0])
        if sizeof == 348:
            dims = np.frombuffer(head[40:56], dtype=f"{order}i2").astype(np.int64)
            bitpix = int(np.frombuffer(head[72:74], dtype=f"{order}i2")[0])
            offset = int(np.frombuffer(head[108:112], dtype=f"{order}f4")[0])
        elif sizeof == 540 and len(head) >= 540:
            dims = np.frombuffer(head[16:80], dtype=f"{order}i8")
            bitpix = int(np.frombuffer(head[12:14], dtype=f"{order}i2")[0])
            offset = int(np.frombuffer(head[168:176], dtype=f"{order}i8")[0])
        else:
            continue
        ndim = int(dims[0])
        if not 1 <= ndim <= 7 or bitpix <= 0 or offset < 0:
            return None
        voxels = int(np.prod([max(int(d), 1) for d in dims[1:ndim + 1]], dtype=object))
        if voxels > MAX_FILE_VOXELS:
            raise ValueError(f"header declares {voxels} voxels, more than the {MAX_FILE_VOXELS} a volume may have")
        return max(offset, sizeof + 4) + voxels * bitpix // 8
    return None


def _gunzip(blob: bytes) -> bytes:
    """Decompress every gzip member (some writers emit several) in one-shot calls, never past the
    size the NIfTI header declares (a small file of compressed zeros must not inflate to gigabytes).

    Uses ISA-L (python-isal) when installed: about 1.7x faster than zlib on BraTS files.
    """
    try:
        from isal import isal_zlib as zlib_impl
    except ImportError:  # optional speed-up
        zlib_impl = zlib
    try:
        head = zlib_impl.decompressobj(47).decompress(blob, 544)
    except zlib_impl.error as exc:
        raise ValueError(f"corrupt compressed data: {exc}") from None
    declared = declared_nifti_bytes(head)
    limit = (declared + HEADER_SLACK) if declared is not None else 64 * len(blob) + HEADER_SLACK
    parts, total = [], 0
    while blob:
        inflater = zlib_impl.decompressobj(47)  # 47: accept a gzip or zlib header
        try:
            part = inflater.decompress(blob, limit - total + 1)
        except zlib_impl.error as exc:
            raise ValueError(f"corrupt compressed data: {exc}") from None
        total += len(part)
        if total > limit:
            raise ValueError(f"decompresses to more than the {limit} bytes its header declares")
        if not inflater.eof:
            raise EOFError("compressed stream ends early (truncated file)")
        parts.append(part)
        blob = inflater.unused_data
    return b"".join(parts)
