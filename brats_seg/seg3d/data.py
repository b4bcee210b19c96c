"""The 3D task's view of a preprocessed dataset: manifest, split, keyed patch dataset, model metadata."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brats_seg.engine.model_meta import THREE_D_EXTRAS, ModelMeta
from brats_seg.errors import InputError
from brats_seg.io.manifest import load_manifest, resolve_inside
from brats_seg.core.hashing import sha256_file, sha256_json
from brats_seg.seg3d.config import Config3D, split_seed
from brats_seg.seg3d.loader import PatchDataset
from brats_seg.seg3d.split import kfold_split


@dataclass
class Dataset3D:
    manifest_path: Path
    root: Path
    sha256: str  # of the manifest file (provenance)
    fingerprint: str  # of what training reads: case ids, their files' sha256, preprocessing config
    split: dict
    train: list[dict]
    val: list[dict]
    channels: list[str]
    spacing: list[float]
    preprocess: dict = field(default_factory=dict)  # the preprocessing config (spacing, dtype)
    unlabelled: list[str] = field(default_factory=list)


LABELS = 3  # canonical labels 0 bg, 1 NCR, 2 ED, 3 ET
NDIM = {"image": 4, "seg": 3, "fg": 2}


def _check_case_files(root: Path, entry: dict, where: Path) -> None:
    """Each array of a case as the manifest records it: present, its sha256, its shape and
    channels, and its values (images finite, labels 0..3, foreground rows inside the volume).
    Reads every byte once more than training would; see the README for the cost."""
    for key in ("image", "seg", "fg"):
        if entry.get(key):
            path = resolve_inside(root, entry[key], f"{where}: case {entry['id']}")
            if not path.is_file():
                raise InputError(f"{where}: case {entry['id']}", f"{key} file {entry[key]} is missing; "
                                                                 "rerun brats-seg preprocess")
            _check_sha256(path, key, entry, where)
            _check_values(path, key, _check_array(path, key, entry), entry)


def _check_sha256(path: Path, key: str, entry: dict, where: Path) -> None:
    recorded = (entry.get("sha256") or {}).get(key) if isinstance(entry.get("sha256"), dict) else None
    if recorded is None:
        return  # manifests from before per-array hashes: nothing to compare with
    found = sha256_file(path)
    if found != recorded:
        raise InputError(path, f"holds different data than {where} records for case {entry['id']} (sha256 "
                               f"{found[:12]}... != {str(recorded)[:12]}...; the file changed after preprocessing); "
                               "rerun brats-seg preprocess --force")


def _check_array(path: Path, key: str, entry: dict) -> np.ndarray:
    """Open the array (memory-mapped: only the header is read) and check its shape and channels."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(path, f"is not a readable .npy array ({type(exc).__name__}); rerun brats-seg preprocess --force")
    fix = f"for case {entry['id']}; rerun brats-seg preprocess --force"
    if array.ndim != NDIM[key] or (key != "fg" and list(array.shape[:3]) != list(entry["shape"])):
        raise InputError(path, f"has shape {list(array.shape)}, not the {NDIM[key]}-d shape {list(entry['shape'])} "
                               f"the manifest records {fix}")
    if key == "image" and array.shape[3] != len(entry["channels"]):
        raise InputError(path, f"has {array.shape[3]} channels; the manifest records {len(entry['channels'])} "
                               f"({', '.join(entry['channels'])}) {fix}")
    if key == "fg" and array.shape[1] != 4:
        raise InputError(path, f"has shape {list(array.shape)}; expected rows (class, x, y, z) {fix}")
    return array


def _check_values(path: Path, key: str, array: np.ndarray, entry: dict) -> None:
    """Images finite (checked a channel at a time: one contiguous block each), labels 0..3, and
    foreground rows of a class 1..3 at a voxel inside the volume."""
    fix = f"for case {entry['id']}; rerun brats-seg preprocess --force"
    if key == "image":
        if not np.issubdtype(array.dtype, np.floating):
            raise InputError(path, f"has dtype {array.dtype}; expected floating-point intensities {fix}")
        for c, name in enumerate(entry["channels"]):
            if not np.isfinite(array[..., c]).all():
                raise InputError(path, f"channel {name} holds NaN or infinite values; expected finite "
                                       f"intensities {fix}")
        return
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(path, f"has dtype {array.dtype}; expected integers {fix}")
    if array.size == 0:
        return
    if key == "seg":
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > LABELS:
            raise InputError(path, f"holds label {hi if hi > LABELS else lo}; expected labels 0..{LABELS} {fix}")
        return
    rows = np.asarray(array)
    inside = (rows[:, 0] >= 0) & (rows[:, 0] <= LABELS) & (rows[:, 1:] >= 0).all(1) \
        & (rows[:, 1:] < np.asarray(entry["shape"])).all(1)
    if not inside.all():
        bad = rows[int(np.argmin(inside))].tolist()
        raise InputError(path, f"holds row {bad}; expected (class 0..{LABELS}, a voxel inside {list(entry['shape'])}) {fix}")


def open_dataset(manifest_path: Path, cfg: Config3D) -> Dataset3D:
    """Load preprocessed.json, keep labelled cases, split them by case for cfg.data.fold."""
    manifest_path = Path(manifest_path)
    manifest = load_manifest(manifest_path, stage="preprocessed")
    root = manifest_path.resolve().parent
    cases = manifest["cases"]
    labelled = [c for c in cases if c.get("seg")]
    if not labelled:
        raise InputError(manifest_path, "has no labelled case (no 'seg'); training needs segmentations")
    channels = list(labelled[0]["channels"])
    for c in labelled:
        if list(c["channels"]) != channels:
            raise InputError(f"{manifest_path}: case {c['id']}", f"channels {c['channels']} differ from "
                                                                f"{channels} of case {labelled[0]['id']}")
        _check_case_files(root, c, manifest_path)
    bias_channel_indices(cfg.augment.bias_field_channels, channels)  # a misnamed channel fails here
    split = kfold_split([c["id"] for c in labelled], cfg.data.folds, cfg.data.fold, split_seed(cfg))
    by_id = {c["id"]: c for c in labelled}
    val = [by_id[i] for i in split["val"]]
    if cfg.validation.max_cases:
        val = val[: cfg.validation.max_cases]
    preprocess = dict(manifest["config"].get("preprocess") or {})
    spacing = preprocess.get("spacing")
    spacing = list(spacing) if isinstance(spacing, (list, tuple)) else list(labelled[0]["spacing"])
    fingerprint = sha256_json({"preprocess": preprocess,
                               "cases": sorted([c["id"], c["sha256"]] for c in labelled)})
    return Dataset3D(manifest_path, root, sha256_file(manifest_path), fingerprint, split,
                     [by_id[i] for i in split["train"]], val, channels, spacing, preprocess,
                     [c["id"] for c in cases if not c.get("seg")])


def patch_dataset(data: Dataset3D, cfg: Config3D, world_size: int) -> PatchDataset:
    """The keyed training patches (augmented unless switched off) for the engine's sample stream."""
    return PatchDataset(data.root, data.train, cfg.data.patch_size, cfg.data.fg_fraction,
                        cfg.augment if cfg.augment.enabled else None, cfg.seed, world_size,
                        outside=cfg.data.outside,
                        bias_channels=bias_channel_indices(cfg.augment.bias_field_channels, data.channels))


def bias_channel_indices(names: tuple[str, ...], channels: list[str]) -> tuple[int, ...] | None:
    """Indices of the bias field's channels in the data's channel order (None: "all")."""
    if tuple(names) == ("all",):
        return None
    unknown = [n for n in names if n not in channels]
    if unknown:
        raise InputError("augment.bias_field_channels", f"got {list(names)}; {unknown[0]!r} is not a channel of "
                                                        f"the training data ({', '.join(channels)})")
    return tuple(channels.index(n) for n in names)


def model_meta(cfg: Config3D, data: Dataset3D) -> ModelMeta:
    """What inference needs to rebuild and use the model (stored in checkpoints and run.json)."""
    out_channels = 3 if cfg.loss.mode == "regions" else 4
    kwargs: dict = {"in_channels": len(data.channels), "out_channels": out_channels,
                    "features": list(cfg.model.features)}
    if cfg.model.name == "attention_unet3d":  # MONAI alternatives take only the common keywords
        kwargs.update(norm=cfg.model.norm, deep_supervision=cfg.model.deep_supervision,
                      dropout=cfg.model.dropout, upsample=cfg.model.upsample)
    return ModelMeta(task="3d", model=cfg.model.name, model_kwargs=kwargs, loss_mode=cfg.loss.mode,
                     patch_size=list(cfg.data.patch_size), channels=data.channels, spacing=data.spacing,
                     preprocess=data.preprocess, extra=dict(THREE_D_EXTRAS))
