"""The 3D trainer's view of a preprocessed dataset: manifest, split, loaders, model metadata."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from brats_seg.seg3d.loader import PatchDataset, StreamSampler, make_loader
from brats_seg.errors import InputError
from brats_seg.io.manifest import load_manifest, resolve_inside
from brats_seg.core.hashing import sha256_file, sha256_json
from brats_seg.seg3d.config import Config3D
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


def _check_case_files(root: Path, entry: dict, where: Path) -> None:
    for key in ("image", "seg", "fg"):
        if entry.get(key):
            path = resolve_inside(root, entry[key], f"{where}: case {entry['id']}")
            if not path.is_file():
                raise InputError(f"{where}: case {entry['id']}", f"{key} file {entry[key]} is missing; "
                                                                 "rerun brats-seg preprocess")
            _check_array(path, key, entry)


def _check_array(path: Path, key: str, entry: dict) -> None:
    """Open the array header (memory-mapped: no data read) so a damaged file fails here, named."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(path, f"is not a readable .npy array ({type(exc).__name__}); rerun brats-seg preprocess --force")
    wanted = {"image": 4, "seg": 3, "fg": 2}[key]
    if array.ndim != wanted or (key != "fg" and list(array.shape[:3]) != list(entry["shape"])):
        raise InputError(path, f"has shape {list(array.shape)}, not what the manifest records for case {entry['id']}; "
                               "rerun brats-seg preprocess --force")


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
    split = kfold_split([c["id"] for c in labelled], cfg.data.folds, cfg.data.fold, cfg.seed)
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


def samples_per_epoch(cfg: Config3D) -> int:
    """Samples one rank draws per epoch: steps x accumulation x batch."""
    return cfg.train.steps_per_epoch * cfg.optim.grad_accum * cfg.data.batch_size


def build_loader(data: Dataset3D, cfg: Config3D, rank: int, world_size: int,
                 device: torch.device) -> tuple[torch.utils.data.DataLoader, StreamSampler]:
    dataset = PatchDataset(data.root, data.train, cfg.data.patch_size, cfg.data.fg_fraction,
                           cfg.augment if cfg.augment.enabled else None, cfg.seed, world_size,
                           outside=cfg.data.outside)
    sampler = StreamSampler(samples_per_epoch(cfg), rank)
    loader = make_loader(dataset, sampler, cfg.data.batch_size, cfg.data.num_workers, cfg.seed, rank,
                         pin_memory=device.type == "cuda")
    return loader, sampler


def model_meta(cfg: Config3D, data: Dataset3D) -> dict:
    """What inference needs to rebuild and use the model (stored in checkpoints and run.json)."""
    out_channels = 3 if cfg.loss.mode == "regions" else 4
    kwargs: dict = {"in_channels": len(data.channels), "out_channels": out_channels,
                    "features": list(cfg.model.features)}
    if cfg.model.name == "attention_unet3d":  # MONAI alternatives take only the common keywords
        kwargs.update(norm=cfg.model.norm, deep_supervision=cfg.model.deep_supervision,
                      dropout=cfg.model.dropout, upsample=cfg.model.upsample)
    return {"model": cfg.model.name, "model_kwargs": kwargs, "loss_mode": cfg.loss.mode,
            "patch_size": list(cfg.data.patch_size), "channels": data.channels, "spacing": data.spacing,
            "preprocess": data.preprocess,
            "regions": ["WT", "TC", "ET"], "labels": "canonical: 0 bg, 1 NCR, 2 ED, 3 ET"}
