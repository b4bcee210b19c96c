"""On-disk layout of a preprocessed case, shared by preprocessing (writer) and training/inference (readers).

Per case, under the folder of preprocessed.json:
  cases/<id>/image.npy   float16 (X, Y, Z, C) in Fortran order (each channel one contiguous block with
                         X fastest, as in NIfTI), channels in manifest order, z-scored, background 0
  cases/<id>/seg.npy     uint8 (X, Y, Z) in Fortran order, canonical labels 0 bg, 1 NCR, 2 ED, 3 ET
  cases/<id>/fg.npy      int32 (K, 4): rows (class, x, y, z), a bounded random sample of voxels per class
Plain .npy so a patch sampler can np.load(..., mmap_mode="r") and read only the patch it needs.
Fortran order because NIfTI data arrives that way: writing it needs no transposing copy, which
measured 3x slower than the cast itself. Readers get channel-first (C, X, Y, Z) views.
The manifest entry names these paths (relative to the manifest's folder) under "image", "seg", "fg".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CASES_DIR = "cases"


def case_dir(root: Path, case_id: str) -> Path:
    return Path(root) / CASES_DIR / case_id


def open_image(root: Path, entry: dict, mmap: bool = True) -> np.ndarray:
    """The (C, X, Y, Z) image of a case (a view); memory-mapped unless mmap=False."""
    return np.moveaxis(np.load(Path(root) / entry["image"], mmap_mode="r" if mmap else None), -1, 0)


def open_seg(root: Path, entry: dict, mmap: bool = True) -> np.ndarray | None:
    """The canonical (X, Y, Z) uint8 label map, or None for an unlabelled case."""
    if not entry.get("seg"):
        return None
    return np.load(Path(root) / entry["seg"], mmap_mode="r" if mmap else None)


def open_foreground(root: Path, entry: dict) -> dict[int, np.ndarray]:
    """class -> (N, 3) voxel coordinates sampled from that class (for foreground oversampling)."""
    if not entry.get("fg"):
        return {}
    rows = np.load(Path(root) / entry["fg"])
    return {int(c): rows[rows[:, 0] == c, 1:] for c in np.unique(rows[:, 0])}
