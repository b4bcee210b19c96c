"""Geometry travels with every volume from reader to writer, so masks come back on the exact input grid.

Affines are nibabel's: voxel (i, j, k) -> RAS+ world millimetres. NRRD/MHA (LPS world) are converted
on read. qform and sform are kept separately, with their codes, so a NIfTI written back carries the
same header geometry as the file it came from.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from brats_seg.errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Geometry:
    shape: tuple[int, int, int]
    affine: tuple[tuple[float, ...], ...]  # 4x4, RAS world; the sform when set, else the qform
    qform: tuple[tuple[float, ...], ...] | None = None
    qform_code: int = 0
    sform_code: int = 0
    source_format: str = "nifti"
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def affine_array(self) -> np.ndarray:
        return np.asarray(self.affine, dtype=np.float64)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (column norms of the affine)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine_array[:3, :3], axis=0))

    @property
    def orientation(self) -> str:
        """Axis codes such as 'LPS' (where each array axis points, in RAS+ terms)."""
        return "".join(nib.aff2axcodes(self.affine_array))

    @property
    def origin(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.affine_array[:3, 3])

    @property
    def direction(self) -> np.ndarray:
        """Unit direction cosines (3x3, columns per axis) in RAS."""
        return self.affine_array[:3, :3] / np.asarray(self.spacing)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        d.update(spacing=list(self.spacing), orientation=self.orientation)
        return d

    @staticmethod
    def from_dict(d: dict) -> "Geometry":
        return Geometry(
            shape=tuple(int(v) for v in d["shape"]),
            affine=as_affine_tuple(d["affine"]),
            qform=as_affine_tuple(d["qform"]) if d.get("qform") is not None else None,
            qform_code=int(d.get("qform_code", 0)),
            sform_code=int(d.get("sform_code", 0)),
            source_format=d.get("source_format", "nifti"),
        )


def as_affine_tuple(a) -> tuple[tuple[float, ...], ...]:
    arr = np.asarray(a, dtype=np.float64).reshape(4, 4)
    return tuple(tuple(float(v) for v in row) for row in arr)


def same_grid(a: Geometry, b: Geometry, atol_mm: float = 1e-3, rtol_dir: float = 1e-4) -> str | None:
    """None if a and b share a voxel grid within tolerance, else what differs (for error messages)."""
    if a.shape != b.shape:
        return f"shape {list(b.shape)} differs from {list(a.shape)}"
    if not np.allclose(a.spacing, b.spacing, rtol=1e-4, atol=1e-5):
        return f"spacing {_fmt(b.spacing)} differs from {_fmt(a.spacing)}"
    if not np.allclose(a.origin, b.origin, atol=atol_mm):
        return f"origin {_fmt(b.origin)} differs from {_fmt(a.origin)}"
    if not np.allclose(a.direction, b.direction, atol=rtol_dir):
        return f"direction {b.orientation} differs from {a.orientation} by {axis_angle_deg(a.direction, b.direction):.3g} degrees"
    return None


def axis_angle_deg(d1: np.ndarray, d2: np.ndarray) -> float:
    """Largest angle between corresponding axes of two direction matrices."""
    cos = np.clip(np.sum(d1 * d2, axis=0), -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)).max())


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


# Voxel sizes (mm per axis) a brain MRI can plausibly have: outside this, the header is almost surely
# wrong (metres or micrometres), and resampling would yield a 1-voxel grid or one of 10^11 voxels.
VOXEL_SIZE_RANGE_MM = (0.05, 20.0)


def check_voxel_size(path: str | Path, spacing: Iterable[float], lo: float = VOXEL_SIZE_RANGE_MM[0],
                     hi: float = VOXEL_SIZE_RANGE_MM[1], option: str = "--spacing-range") -> None:
    """InputError naming `path` when a voxel size is not finite or lies outside [lo, hi] mm; `option`
    is the flag that widens the range, named in the message."""
    values = [float(v) for v in spacing]
    if not all(np.isfinite(v) and lo <= v <= hi for v in values):
        raise InputError(path, f"voxel size {_fmt(values)} mm is outside {lo:g} to {hi:g} mm per axis; expected a "
                               f"plausible MRI voxel size (check the header's units, or widen with {option} LO,HI)")


def voxel_ml(spacing: Sequence[float]) -> float:
    """One voxel's volume in mL (1 mL = 1000 mm^3), for volumes reported from voxel counts."""
    return float(np.prod([float(s) for s in spacing])) / 1000.0
