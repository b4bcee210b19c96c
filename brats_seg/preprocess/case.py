"""Preprocess one case: read and verify, reorient to RAS, crop to the brain, resample, z-score, store.

Everything needed to go back to the original file grid is returned in the manifest entry
(see inverse.py), so inference can put predictions back exactly where they belong.

The brain region (one rule for preprocessing and inference): the crop is the bounding box of the
voxels nonzero in any channel, and each channel is z-scored over its own nonzero voxels inside it
(background stays exactly 0). For skull-stripped BraTS data that is the brain. An image with no zero
border (not skull-stripped, or a constant modality) has its whole volume as the region: the crop
keeps every voxel and the statistics run over all of them; a constant channel (std 0) is divided by
1 and becomes all zeros. The arrays read are never written to: they may be read-only views of the
decompressed file bytes, or a caller's own arrays.

Every file read is held to ingest's content rules again (io.content), and a resampled grid may
not pass MAX_GRID_VOXELS per channel (`max_voxels`), so a wrong voxel size cannot ask for 10^11 voxels.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brats_seg.errors import InputError
from brats_seg.io.content import read_image_record, read_label_record
from brats_seg.io.labels import canonical_with_counts
from brats_seg.io.geometry import VOXEL_SIZE_RANGE_MM, Geometry, same_grid
from brats_seg.core.atomic import atomic_path
from brats_seg.preprocess import spatial
from brats_seg.preprocess.store import case_dir

FG_SAMPLES_PER_CLASS = 10_000
PERCENTILE_SAMPLE = 20_000
MAX_GRID_VOXELS = 512 ** 3  # per channel after resampling (~0.5 GB as float32): beyond any brain MRI grid


@dataclass(frozen=True)
class PreprocessConfig:
    """spacing and dtype decide the output (hashed); the bounds only refuse inputs, so they are not hashed."""

    spacing: str | tuple[float, float, float] = "native"  # "native" or target mm per axis
    dtype: str = "float16"
    max_voxels: int = MAX_GRID_VOXELS  # voxels per channel a resampled grid may have
    spacing_range: tuple[float, float] = VOXEL_SIZE_RANGE_MM  # input voxel sizes accepted, mm

    def to_dict(self) -> dict:
        return {"spacing": self.spacing if isinstance(self.spacing, str) else list(self.spacing), "dtype": self.dtype}


def load_case(case: dict, root: Path, spacing_range: tuple[float, float] = VOXEL_SIZE_RANGE_MM
              ) -> tuple[list[np.ndarray], np.ndarray | None, Geometry]:
    """Read every channel and the label map as stored, verified against the manifest (sha256, shape,
    volume_index) and held to ingest's content rules; all on one grid."""
    images, geometry, first, links = [], None, None, case.get("links")
    for channel in case["channels"]:
        path, data, geom = read_image_record(root, case["images"][channel], case["id"], spacing_range, links)
        if geometry is None:
            geometry, first = geom, path
        elif (problem := same_grid(geometry, geom)) is not None:
            raise InputError(path, f"{problem} of {first.name}; expected all images of a case on one grid")
        images.append(data)
    seg = None
    if case.get("seg"):
        path, seg, geom = read_label_record(root, case["seg"], case["label_convention"], case["id"], spacing_range,
                                            links)
        if (problem := same_grid(geometry, geom)) is not None:
            raise InputError(path, f"label map is on another grid: {problem} of the images; expected the images' grid")
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
                   cfg: PreprocessConfig, label_convention: str | None = None, case_id: str = "case") -> PreparedCase:
    """The per-case chain without writing anything (shared by preprocessing and inference).

    The crop box is found and applied in file axes (contiguous memory, cheap); only the cropped
    block is reoriented, as a view that the normalisation copies once.
    """
    box = spatial.union_nonzero_box(images)
    cropped_file_shape = tuple(hi - lo for lo, hi in box)
    ornt = spatial.canonical_ornt(geom.affine_array)
    views = [spatial.reorient(spatial.crop(im, box), ornt) for im in images]
    image, norm = _normalise(views, channels, cfg.dtype, case_id)
    labels, class_voxels = None, None
    if seg is not None:  # canonical labels after cropping: a third of the voxels to map
        labels, counts = canonical_with_counts(spatial.reorient(spatial.crop(seg, box), ornt), label_convention,
                                               order="F")
        class_voxels = {str(c): n for c, n in enumerate(counts)}
    affine = geom.affine_array @ spatial.translation([lo for lo, _ in box])
    affine = spatial.reoriented_affine(affine, ornt, cropped_file_shape)
    cropped_shape = tuple(int(n) for n in views[0].shape)
    image, labels, affine = _maybe_resample(image, labels, affine, cfg, case_id)
    if labels is not None and cfg.spacing != "native":  # resampling changes the counts
        class_voxels = {str(c): int(np.count_nonzero(labels == c)) for c in range(1, 4)}
        class_voxels = {"0": labels.size - sum(class_voxels.values()), **class_voxels}
    source = {"geometry": geom.to_dict(), "ornt": ornt.astype(int).tolist(),
              "crop_box": box, "cropped_shape": list(cropped_shape)}
    return PreparedCase(image, labels, affine, norm, source, class_voxels)


def preprocess_case(case: dict, root: Path, out_root: Path, cfg: PreprocessConfig) -> dict:
    """Run the whole per-case chain and write the case's arrays; returns its manifest entry."""
    images, seg, geom = load_case(case, root, cfg.spacing_range)
    prepared = prepare_arrays(images, seg, geom, case["channels"], cfg,
                              case["label_convention"] if seg is not None else None, case["id"])
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


def _normalise(views: list[np.ndarray], channels: list[str], dtype: str, case_id: str) -> tuple[np.ndarray, dict]:
    """Z-score each channel over its nonzero (brain) voxels; background stays exactly 0.

    Zeros add nothing to the sums, so the statistics need no masked copy of the brain voxels;
    only brain voxels are converted to the output dtype (float16 conversion is numpy's slowest step).
    The float32 working copy is the function's own: a float32 view that needs no conversion (a
    whole-volume crop of a float32 file) is copied rather than scaled in place.
    """
    out = np.zeros(views[0].shape + (len(views),), dtype=dtype, order="F")
    norm = {}
    for c, (name, view) in enumerate(zip(channels, views)):
        flat = np.asfortranarray(view, dtype=np.float32)
        if np.may_share_memory(flat, view):
            flat = flat.copy(order="F")
        flat = flat.reshape(-1, order="F")
        brain = flat != 0
        count = int(np.count_nonzero(brain))
        if count == 0:
            raise InputError(case_id, f"channel {name} is all zero inside the crop; expected brain signal")
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


def _maybe_resample(image: np.ndarray, labels: np.ndarray | None, affine: np.ndarray, cfg: PreprocessConfig,
                    case_id: str):
    if cfg.spacing == "native":
        return image, labels, affine
    spacing = tuple(np.linalg.norm(affine[:3, :3], axis=0))
    shape = spatial.target_shape(image.shape[:3], spacing, tuple(cfg.spacing))
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > cfg.max_voxels:
        raise InputError(case_id, f"resampling {list(image.shape[:3])} voxels of {_mm(spacing)} mm to {_mm(cfg.spacing)} mm "
                                  f"gives a {list(shape)} grid ({voxels} voxels per channel), more than the "
                                  f"{cfg.max_voxels} allowed; expected a voxel size near the target (or raise --max-voxels)")
    chan_first = np.moveaxis(image, -1, 0).astype(np.float32)
    resampled = np.asfortranarray(np.moveaxis(spatial.resample_image(chan_first, shape, order=1), 0, -1), dtype=image.dtype)
    if labels is not None:
        labels = np.asfortranarray(spatial.resample_labels(labels, shape))
    return resampled, labels, spatial.resampled_affine(affine, image.shape[:3], shape)


def _mm(values) -> str:
    return "x".join(f"{float(v):.4g}" for v in values)


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
