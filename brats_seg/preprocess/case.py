"""Preprocess one case: read and verify, reorient to RAS, crop to the brain, resample, z-score, store.

Everything needed to go back to the original file grid is returned in the manifest entry
(see inverse.py), so inference can put predictions back exactly where they belong.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brats_seg.errors import InputError
from brats_seg.io.labels import canonical_with_counts
from brats_seg.io.geometry import Geometry
from brats_seg.io.volume import read_volume_verified
from brats_seg.core.atomic import atomic_path
from brats_seg.io.manifest import resolve_inside
from brats_seg.preprocess import spatial
from brats_seg.preprocess.store import case_dir

FG_SAMPLES_PER_CLASS = 10_000
PERCENTILE_SAMPLE = 20_000


@dataclass(frozen=True)
class PreprocessConfig:
    spacing: str | tuple[float, float, float] = "native"  # "native" or target mm per axis
    dtype: str = "float16"

    def to_dict(self) -> dict:
        return {"spacing": self.spacing if isinstance(self.spacing, str) else list(self.spacing), "dtype": self.dtype}


def load_case(case: dict, root: Path) -> tuple[list[np.ndarray], np.ndarray | None, Geometry]:
    """Read every channel and the label map as stored (verified against the manifest's sha256)."""
    images, geometry = [], None
    for channel in case["channels"]:
        rec = case["images"][channel]
        path = resolve_inside(root, rec["path"], case["id"])
        data, geom = read_volume_verified(path, rec["sha256"], allow_4d=rec.get("volume_index") is not None)
        if rec.get("volume_index") is not None:
            data = data[..., rec["volume_index"]]
        images.append(data)
        geometry = geometry or geom
    seg = None
    if case.get("seg"):
        path = resolve_inside(root, case["seg"]["path"], case["id"])
        seg, _ = read_volume_verified(path, case["seg"]["sha256"])
    return images, seg, geometry


@dataclass
class PreparedCase:
    """A case in preprocessed space, in memory; `source` is what inverse.py needs to go back."""

    image: np.ndarray  # (X, Y, Z, C), Fortran order, cfg.dtype
    labels: np.ndarray | None  # canonical (X, Y, Z) uint8, or None
    affine: np.ndarray
    norm: dict
    source: dict  # geometry, ornt, crop_box, cropped_shape
    class_voxels: dict | None = None  # {"0".."3": voxels} of `labels`


def prepare_arrays(images: list[np.ndarray], seg: np.ndarray | None, geom: Geometry, channels: list[str],
                   cfg: PreprocessConfig, label_convention: str | None = None) -> PreparedCase:
    """The per-case chain without writing anything (shared by preprocessing and inference).

    The crop box is found and applied in file axes (contiguous memory, cheap); only the cropped
    block is reoriented, as a view that the normalisation copies once.
    """
    box = spatial.union_nonzero_box(images)
    cropped_file_shape = tuple(hi - lo for lo, hi in box)
    ornt = spatial.canonical_ornt(geom.affine_array)
    views = [spatial.reorient(spatial.crop(im, box), ornt) for im in images]
    image, norm = _normalise(views, channels, cfg.dtype)
    labels, class_voxels = None, None
    if seg is not None:  # canonical labels after cropping: a third of the voxels to map
        labels, counts = canonical_with_counts(spatial.reorient(spatial.crop(seg, box), ornt), label_convention,
                                               order="F")
        class_voxels = {str(c): n for c, n in enumerate(counts)}
    affine = geom.affine_array @ spatial.translation([lo for lo, _ in box])
    affine = spatial.reoriented_affine(affine, ornt, cropped_file_shape)
    cropped_shape = tuple(int(n) for n in views[0].shape)
    image, labels, affine = _maybe_resample(image, labels, affine, cfg)
    if labels is not None and cfg.spacing != "native":  # resampling changes the counts
        class_voxels = {str(c): int(np.count_nonzero(labels == c)) for c in range(1, 4)}
        class_voxels = {"0": labels.size - sum(class_voxels.values()), **class_voxels}
    source = {"geometry": geom.to_dict(), "ornt": ornt.astype(int).tolist(),
              "crop_box": box, "cropped_shape": list(cropped_shape)}
    return PreparedCase(image, labels, affine, norm, source, class_voxels)


def preprocess_case(case: dict, root: Path, out_root: Path, cfg: PreprocessConfig) -> dict:
    """Run the whole per-case chain and write the case's arrays; returns its manifest entry."""
    images, seg, geom = load_case(case, root)
    prepared = prepare_arrays(images, seg, geom, case["channels"], cfg,
                              case["label_convention"] if seg is not None else None)
    image, affine = prepared.image, prepared.affine
    entry = {
        "id": case["id"], "channels": list(case["channels"]),
        "shape": [int(n) for n in image.shape[:3]],
        "spacing": [round(float(v), 6) for v in np.linalg.norm(affine[:3, :3], axis=0)],
        "affine": affine.tolist(),
        "norm": prepared.norm,
        "source": {
            **prepared.source,
            "label_convention": case.get("label_convention"),
            "inputs_sha256": {c: case["images"][c]["sha256"] for c in case["channels"]}
            | ({"seg": case["seg"]["sha256"]} if case.get("seg") else {}),
        },
    }
    entry.update(_write_arrays(out_root, case["id"], image, prepared.labels, prepared.class_voxels))
    return entry


def _normalise(views: list[np.ndarray], channels: list[str], dtype: str) -> tuple[np.ndarray, dict]:
    """Z-score each channel over its nonzero (brain) voxels; background stays exactly 0.

    Zeros add nothing to the sums, so the statistics need no masked copy of the brain voxels;
    only brain voxels are converted to the output dtype (float16 conversion is numpy's slowest step).
    """
    out = np.zeros(views[0].shape + (len(views),), dtype=dtype, order="F")
    norm = {}
    for c, (name, view) in enumerate(zip(channels, views)):
        flat = np.asfortranarray(view, dtype=np.float32).reshape(-1, order="F")
        brain = flat != 0
        count = int(np.count_nonzero(brain))
        if count == 0:
            raise InputError(name, "channel is all zero inside the crop; expected brain signal")
        mean, std = _mean_std(flat, count)
        norm[name] = {"mean": mean, "std": std, **_percentiles(view), "voxels": count}
        flat -= mean
        flat *= 1.0 / std
        np.copyto(out[..., c].reshape(-1, order="F"), flat, where=brain, casting="same_kind")
    return out, norm


def _mean_std(flat: np.ndarray, count: int) -> tuple[float, float]:
    """Mean and std over the `count` nonzero values of `flat` (float64 totals of float32 row sums)."""
    rows = flat[: flat.size // 4096 * 4096].reshape(-1, 4096)
    tail = flat[rows.size:].astype(np.float64)
    total = float(rows.sum(axis=1).sum(dtype=np.float64) + tail.sum())
    sumsq = float(np.einsum("ij,ij->i", rows, rows).sum(dtype=np.float64) + np.dot(tail, tail))
    mean = total / count
    std = float(np.sqrt(max(sumsq / count - mean * mean, 0.0)))
    return mean, (std if std > 1e-8 else 1.0)


def _percentiles(view: np.ndarray) -> dict:
    """0.5 and 99.5 percentiles of the brain intensities, from an evenly strided sample (cheap)."""
    step = max(1, round((view.size / (4 * PERCENTILE_SAMPLE)) ** (1 / 3)))
    sample = np.asarray(view[::step, ::step, ::step], dtype=np.float32).ravel()
    sample = sample[sample != 0]
    if sample.size == 0:
        sample = np.asarray(view, dtype=np.float32)[np.asarray(view) != 0]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    return {"p00_5": float(lo), "p99_5": float(hi)}


def _maybe_resample(image: np.ndarray, labels: np.ndarray | None, affine: np.ndarray, cfg: PreprocessConfig):
    if cfg.spacing == "native":
        return image, labels, affine
    spacing = tuple(np.linalg.norm(affine[:3, :3], axis=0))
    shape = spatial.target_shape(image.shape[:3], spacing, tuple(cfg.spacing))
    chan_first = np.moveaxis(image, -1, 0).astype(np.float32)
    resampled = np.asfortranarray(np.moveaxis(spatial.resample_image(chan_first, shape, order=1), 0, -1), dtype=image.dtype)
    if labels is not None:
        labels = np.asfortranarray(spatial.resample_labels(labels, shape))
    return resampled, labels, spatial.resampled_affine(affine, image.shape[:3], shape)


def _write_arrays(out_root: Path, case_id: str, image: np.ndarray, labels: np.ndarray | None,
                  class_voxels: dict | None) -> dict:
    folder = case_dir(out_root, case_id)
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(".*.tmp*"):  # temp files of a killed earlier run
        leftover.unlink(missing_ok=True)
    written = {"image": _save(folder / "image.npy", image)}
    if labels is not None:
        written["seg"] = _save(folder / "seg.npy", labels)
        written["fg"] = _save(folder / "fg.npy", _foreground_sample(labels, case_id))
        written["class_voxels"] = class_voxels
    rel = {k: f"cases/{case_id}/{k}.npy" for k in written if k != "class_voxels"}
    return {**rel, "sha256": {k: written[k] for k in rel}, "class_voxels": written.get("class_voxels"),
            "seg": rel.get("seg"), "fg": rel.get("fg")}


def _save(path: Path, array: np.ndarray) -> str:
    """np.save atomically, hashing the bytes as they are written (no read-back, no copy).

    No fsync: a rename is atomic against a killed process, and after a power loss the resume
    check re-hashes every output, so a lost array is redone rather than trusted.
    """
    with atomic_path(path, durable=False) as tmp, open(tmp, "wb") as raw:
        sink = _HashingWriter(raw)
        body = _memory_order_bytes(array)
        if body is None:
            np.lib.format.write_array(sink, array, allow_pickle=False)
        else:  # the same bytes np.save writes, straight from the array's memory
            np.lib.format.write_array_header_1_0(sink, np.lib.format.header_data_from_array_1_0(array))
            sink.write(body)
    return sink.hexdigest()


def _memory_order_bytes(array: np.ndarray) -> memoryview | None:
    """The array's bytes in the order .npy stores them (C, or F when Fortran-ordered), or None."""
    if array.dtype.hasobject:
        return None
    if array.flags.c_contiguous:
        return memoryview(array.reshape(-1)).cast("B")
    if array.flags.f_contiguous:
        return memoryview(array.T.reshape(-1)).cast("B")
    return None


class _HashingWriter:
    def __init__(self, raw):
        self.raw, self.hash = raw, hashlib.sha256()

    def write(self, data) -> int:
        self.hash.update(data)
        return self.raw.write(data)

    def hexdigest(self) -> str:
        return self.hash.hexdigest()


def _foreground_sample(labels: np.ndarray, case_id: str) -> np.ndarray:
    """Up to FG_SAMPLES_PER_CLASS voxel coordinates per tumour class, deterministic per case."""
    rng = np.random.default_rng(int(hashlib.sha256(case_id.encode()).hexdigest()[:15], 16))
    flat = labels.ravel(order="F")
    where = np.flatnonzero(flat)  # tumour voxels are few: one pass, then per class
    classes = flat[where]
    rows = []
    for c in (1, 2, 3):
        idx = where[classes == c]
        if len(idx) > FG_SAMPLES_PER_CLASS:
            idx = np.sort(rng.choice(idx, FG_SAMPLES_PER_CLASS, replace=False))
        coords = np.column_stack(np.unravel_index(idx, labels.shape, order="F"))
        rows.append(np.column_stack([np.full(len(idx), c), coords]))
    return np.concatenate(rows).astype(np.int32)
