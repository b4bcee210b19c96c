"""Patch sampling from memory-mapped preprocessed cases: read only the voxels a patch needs.

A patch is addressed by its centre voxel; patch voxel p (0..P-1 per axis) maps to volume voxel
`centre + A @ (p - P//2)`, with A the identity for a plain crop or a rotation/scaling matrix from
augmentation. Whatever falls outside the volume is zero (background after z-scoring, label 0),
which is also how volumes smaller than the patch are padded.

Foreground oversampling is deterministic per sample index: sample j is forced onto a voxel of a
random present class (from fg.npy) exactly when floor((j+1)·f) > floor(j·f), so any run of
consecutive samples holds the fraction f of forced patches (±1), with no batch left to luck.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brats_seg.preprocess.store import open_foreground, open_image, open_seg


@dataclass
class CaseArrays:
    """One case opened for sampling: memory-mapped image/seg and the foreground voxel lists."""

    id: str
    image: np.ndarray  # (C, X, Y, Z), memory-mapped
    seg: np.ndarray | None  # (X, Y, Z) uint8, memory-mapped
    fg: dict[int, np.ndarray]  # class -> (N, 3) voxel coordinates

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])  # type: ignore[return-value]


def open_case(root: Path, entry: dict) -> CaseArrays:
    """Open a manifest case without reading its voxels."""
    fg = {c: v for c, v in open_foreground(root, entry).items() if c > 0 and len(v)}
    return CaseArrays(entry["id"], open_image(root, entry), open_seg(root, entry), fg)


class CaseCache:
    """A small LRU of opened cases, so a worker does not hold a file mapping for every case."""

    def __init__(self, root: Path, entries: list[dict], size: int = 32) -> None:
        self.root, self.entries, self.size = Path(root), entries, size
        self._open: OrderedDict[int, CaseArrays] = OrderedDict()

    def get(self, index: int) -> CaseArrays:
        if index in self._open:
            self._open.move_to_end(index)
            return self._open[index]
        case = open_case(self.root, self.entries[index])
        self._open[index] = case
        if len(self._open) > self.size:
            self._open.popitem(last=False)
        return case

    def __getstate__(self) -> dict:  # never pickle mappings into worker processes
        return {"root": self.root, "entries": self.entries, "size": self.size, "_open": OrderedDict()}


def is_forced_foreground(index: int, fraction: float) -> bool:
    """True for exactly round-down(n·fraction) of the first n sample indices, spread evenly."""
    return math.floor((index + 1) * fraction + 1e-9) > math.floor(index * fraction + 1e-9)


def choose_centre(case: CaseArrays, patch: tuple[int, int, int], forced_fg: bool,
                  rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(centre voxel, class it was drawn from; 0 = a random location).

    Random patches lie inside the volume where the volume is large enough (and the volume inside
    the patch where it is not); forced patches are centred on a voxel of a random present class.
    """
    if forced_fg and case.fg:
        classes = sorted(case.fg)
        cls = classes[int(rng.integers(len(classes)))]
        voxels = case.fg[cls]
        return voxels[int(rng.integers(len(voxels)))].astype(np.int64), cls
    centre = np.empty(3, np.int64)
    for axis, (size, p) in enumerate(zip(case.shape, patch)):
        lo = int(rng.integers(min(0, size - p), max(0, size - p) + 1))
        centre[axis] = lo + p // 2
    return centre, 0


def read_region(arr: np.ndarray, lo: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """arr[..., lo:lo+size] over the last three axes, zero outside the array; reads only the overlap."""
    spatial = arr.shape[-3:]
    out = np.zeros(arr.shape[:-3] + tuple(size), dtype=arr.dtype)
    src, dst = [], []
    for start, n, dim in zip(lo, size, spatial):
        a, b = max(int(start), 0), min(int(start) + n, dim)
        if a >= b:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - int(start), b - int(start)))
    out[(..., *dst)] = arr[(..., *src)]
    return out


def crop_patch(case: CaseArrays, centre: np.ndarray,
               patch: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Axis-aligned patch around `centre`: image float32 (C, *patch), label uint8 (*patch) or None."""
    lo = np.asarray(centre) - np.asarray(patch) // 2
    image = read_region(case.image, lo, patch).astype(np.float32)
    label = None if case.seg is None else read_region(case.seg, lo, patch)
    return image, label


def warped_patch(case: CaseArrays, centre: np.ndarray, matrix: np.ndarray,
                 patch: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Patch sampled along `centre + matrix @ (p - P//2)`: trilinear image, nearest label.

    Only the bounding box of the sampled coordinates is read from disk.
    """
    import torch

    coords = _patch_coords(centre, matrix, patch)  # (P, P, P, 3) volume coordinates
    lo = np.floor(coords.reshape(-1, 3).min(0)).astype(np.int64)
    hi = np.floor(coords.reshape(-1, 3).max(0)).astype(np.int64) + 2
    size = tuple(int(s) for s in np.maximum(hi - lo, 2))
    grid = _normalised_grid(coords - lo, size)
    region = torch.from_numpy(read_region(case.image, lo, size).astype(np.float32))
    image = _sample(region, grid, "bilinear")
    label = None
    if case.seg is not None:
        seg = torch.from_numpy(read_region(case.seg, lo, size).astype(np.float32))[None]
        label = _sample(seg, grid, "nearest")[0].round().astype(np.uint8)
    return image, label


def _patch_coords(centre: np.ndarray, matrix: np.ndarray, patch: tuple[int, int, int]) -> np.ndarray:
    axes = [np.arange(p, dtype=np.float32) - p // 2 for p in patch]
    offsets = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (P, P, P, 3)
    return offsets @ matrix.T.astype(np.float32) + np.asarray(centre, np.float32)


def _normalised_grid(coords: np.ndarray, size: tuple[int, ...]) -> "torch.Tensor":  # noqa: F821
    """Voxel coordinates inside a region -> grid_sample's [-1, 1] grid (x, y, z reversed)."""
    import torch

    scale = 2.0 / (np.asarray(size, np.float32) - 1.0)
    norm = coords * scale - 1.0
    return torch.from_numpy(np.ascontiguousarray(norm[..., ::-1]))[None]


def _sample(region: "torch.Tensor", grid: "torch.Tensor", mode: str) -> np.ndarray:  # noqa: F821
    import torch.nn.functional as F

    out = F.grid_sample(region[None], grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out[0].numpy()
