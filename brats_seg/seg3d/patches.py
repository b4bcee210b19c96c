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

import functools
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
                  rng: np.random.Generator, outside: float = 0.0) -> tuple[np.ndarray, int]:
    """(centre voxel, class it was drawn from; 0 = a random location).

    Random patches lie inside the volume where the volume is large enough (and the volume inside
    the patch where it is not), give or take `outside` x the patch size per axis: stored volumes
    are cropped to the brain, and patches that reach into the zero background beyond the crop
    teach the network the background-heavy windows that tiling a whole scan produces (as
    nnU-Net's sampler does). Forced patches are centred on a voxel of a random present class.
    """
    if forced_fg and case.fg:
        classes = sorted(case.fg)
        cls = classes[int(rng.integers(len(classes)))]
        voxels = case.fg[cls]
        return voxels[int(rng.integers(len(voxels)))].astype(np.int64), cls
    centre = np.empty(3, np.int64)
    for axis, (size, p) in enumerate(zip(case.shape, patch)):
        margin = int(round(outside * p))
        lo = int(rng.integers(min(0, size - p) - margin, max(0, size - p) + margin + 1))
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

    Only the bounding box of the sampled coordinates (found from the patch's 8 corners, since the
    map is affine) is read from disk; the sampling grid is one matmul straight into grid_sample's
    normalised coordinates.
    """
    import torch

    lo, size = _bounding_box(centre, matrix, patch)
    grid = _sampling_grid(centre, matrix, patch, lo, size)
    region = torch.from_numpy(read_region(case.image, lo, size).astype(np.float32))
    image = _sample(region, grid, "bilinear")
    label = None
    if case.seg is not None:
        seg = torch.from_numpy(read_region(case.seg, lo, size).astype(np.float32))[None]
        label = _sample(seg, grid, "nearest")[0].round().astype(np.uint8)
    return image, label


def _offsets_range(patch: tuple[int, int, int]) -> np.ndarray:
    """(2, 3): lowest and highest patch offset p - P//2 per axis."""
    p = np.asarray(patch)
    return np.stack([-(p // 2), p - 1 - p // 2]).astype(np.float64)


def _bounding_box(centre: np.ndarray, matrix: np.ndarray,
                  patch: tuple[int, int, int]) -> tuple[np.ndarray, tuple[int, int, int]]:
    rng = _offsets_range(patch)
    corners = np.array([[rng[i, 0], rng[j, 1], rng[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    coords = corners @ matrix.T + np.asarray(centre, np.float64)
    lo = np.floor(coords.min(0) - 1e-6).astype(np.int64)
    hi = np.floor(coords.max(0) + 1e-6).astype(np.int64) + 2
    return lo, tuple(int(s) for s in np.maximum(hi - lo, 2))  # type: ignore[return-value]


def _sampling_grid(centre: np.ndarray, matrix: np.ndarray, patch: tuple[int, int, int], lo: np.ndarray,
                   size: tuple[int, int, int]) -> "torch.Tensor":  # noqa: F821
    """grid_sample grid (1, P, P, P, 3): region voxel coordinates scaled to [-1, 1], axes reversed
    (grid_sample wants x = last axis first)."""
    import torch

    scale = 2.0 / (np.asarray(size, np.float64) - 1.0)
    a = (matrix.T * scale[None, :])[:, ::-1]  # offsets (row vector) -> normalised, reversed axes
    b = ((np.asarray(centre, np.float64) - lo) * scale - 1.0)[::-1]
    grid = _patch_offsets(tuple(patch)) @ torch.from_numpy(a.astype(np.float32).copy())
    grid += torch.from_numpy(b.astype(np.float32).copy())
    return grid.reshape(1, *patch, 3)


@functools.lru_cache(maxsize=4)
def _patch_offsets(patch: tuple[int, int, int]) -> "torch.Tensor":  # noqa: F821
    """(P·P·P, 3) float32 offsets p - P//2, cached per patch size (read-only by convention)."""
    import torch

    axes = [torch.arange(p, dtype=torch.float32) - p // 2 for p in patch]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def _sample(region: "torch.Tensor", grid: "torch.Tensor", mode: str) -> np.ndarray:  # noqa: F821
    import torch.nn.functional as F

    out = F.grid_sample(region[None], grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out[0].numpy()
