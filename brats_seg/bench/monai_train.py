"""MONAI reference data pipelines for `brats-seg bench train` (same patches and augmentation as ours).

Two references, both with MONAI transforms and MONAI's DataLoader, the run's batch size, patch
size and number of workers:
- `monai_preprocessed_loader`: MONAI fed from *our* preprocessed arrays (LoadImaged of the whole
  .npy volume per sample). The kindest reference: it inherits our one-off preprocessing.
- `monai_tutorial_loader`: what MONAI's BraTS tutorial does, from the raw NIfTI files for every
  sample: LoadImaged -> EnsureChannelFirstd -> Orientationd(RAS) -> Spacingd (when the run's data
  is resampled) -> CropForegroundd -> NormalizeIntensityd(nonzero, channel_wise), then the same
  cropping and augmentation.
Patch sampling is RandCropByPosNegLabeld with 1 positive : 2 negative (our third of foreground
patches); augmentation is RandRotated, RandZoomd, intensity transforms and three RandFlipd.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from brats_seg.errors import InputError
from brats_seg.io.labels import TO_CANONICAL
from brats_seg.io.manifest import load_manifest, case_root, resolve_inside
from brats_seg.seg3d.config import Config3D
from brats_seg.seg3d.data import Dataset3D

KEYS = ["image", "label"]


def monai_preprocessed_loader(data: Dataset3D, cfg: Config3D):
    """MONAI transforms over our preprocessed arrays (whole volumes loaded per sample)."""
    from monai import transforms as T

    items = [{"image": str(data.root / c["image"]), "label": str(data.root / c["seg"])} for c in data.train]
    head = [T.LoadImaged(KEYS, reader="NumpyReader", image_only=True),
            T.EnsureChannelFirstd("image", channel_dim=-1), T.EnsureChannelFirstd("label", channel_dim="no_channel"),
            T.CastToTyped("image", dtype=np.float32)]
    return _loader(items, head, cfg)


def monai_tutorial_loader(data: Dataset3D, cfg: Config3D, data_roots: Sequence[Path] = ()):
    """MONAI's BraTS-tutorial pipeline: every sample decoded and preprocessed from the raw files
    (data_roots: where the raw manifest's roots may lie besides its own folder, as for preprocess)."""
    from monai import transforms as T

    items, convention = _raw_items(data, data_roots)
    source = TO_CANONICAL[convention]
    with warnings.catch_warnings():  # Orientationd's FutureWarning about its `labels` default
        warnings.simplefilter("ignore", FutureWarning)
        orientation = T.Orientationd(KEYS, axcodes="RAS")
    head = [T.LoadImaged(KEYS, image_only=True), T.EnsureChannelFirstd(KEYS), orientation]
    spacing = data.preprocess.get("spacing")
    if isinstance(spacing, (list, tuple)):
        head.append(T.Spacingd(KEYS, pixdim=tuple(float(s) for s in spacing), mode=("bilinear", "nearest")))
    head += [T.CropForegroundd(KEYS, source_key="image"),
             T.NormalizeIntensityd("image", nonzero=True, channel_wise=True),
             T.MapLabelValued("label", orig_labels=list(source), target_labels=list(source.values()))]
    return _loader(items, head, cfg)


def _raw_items(data: Dataset3D, data_roots: Sequence[Path] = ()) -> tuple[list[dict], str]:
    """The training cases' raw files (from the raw manifest the preprocessing read) and their convention."""
    config = load_manifest(data.manifest_path, stage="preprocessed")["config"]
    raw_path = Path(config.get("raw_manifest") or "")
    if not raw_path.is_file():
        raise InputError(data.manifest_path, f"its raw manifest {raw_path} is gone; the tutorial reference reads it")
    raw = load_manifest(raw_path, stage="raw")
    by_id = {c["id"]: c for c in raw["cases"]}
    items, conventions = [], set()
    for entry in data.train:
        case = by_id[entry["id"]]
        root = case_root(raw_path, raw, case, tuple(data_roots))
        images = [str(resolve_inside(root, case["images"][ch]["path"], case["id"], case.get("links"))) for ch in data.channels]
        items.append({"image": images, "label": str(resolve_inside(root, case["seg"]["path"], case["id"], case.get("links")))})
        conventions.add(case["label_convention"])
    if len(conventions) != 1:
        raise InputError(raw_path, f"cases mix label conventions {sorted(conventions)}; the reference needs one")
    return items, conventions.pop()


def _loader(items: list[dict], head: list, cfg: Config3D):
    """`head` (loading and preprocessing) + the shared patch sampling and augmentation, in a DataLoader."""
    from monai import transforms as T
    from monai.data import DataLoader, Dataset

    if len(items) < cfg.data.batch_size:  # full batches only (drop_last): none at all would spin forever
        raise InputError("bench train", f"{len(items)} training case(s) for batch size {cfg.data.batch_size}; "
                                        "expected at least one full batch")
    patch = list(cfg.data.patch_size)
    chain = T.Compose([
        *head,
        T.SpatialPadd(KEYS, spatial_size=patch),
        T.RandCropByPosNegLabeld(KEYS, "label", spatial_size=patch, pos=1, neg=2, num_samples=1),
        T.RandRotated(KEYS, range_x=0.52, range_y=0.52, range_z=0.52, prob=0.2, mode=("bilinear", "nearest"),
                      keep_size=True),
        T.RandZoomd(KEYS, min_zoom=0.7, max_zoom=1.4, prob=0.2, mode=("trilinear", "nearest"), keep_size=True),
        T.RandScaleIntensityd("image", factors=0.25, prob=0.15),
        T.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3),
        T.RandGaussianNoised("image", std=0.1, prob=0.1),
        T.RandFlipd(KEYS, prob=0.5, spatial_axis=0), T.RandFlipd(KEYS, prob=0.5, spatial_axis=1),
        T.RandFlipd(KEYS, prob=0.5, spatial_axis=2),
        T.CastToTyped("label", dtype=np.uint8),
        T.EnsureTyped(KEYS, track_meta=False),
    ])
    chain.set_random_state(seed=cfg.seed)
    return DataLoader(Dataset(items, transform=chain), batch_size=cfg.data.batch_size, shuffle=True, drop_last=True,
                      num_workers=cfg.data.num_workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=cfg.data.num_workers > 0, collate_fn=_collate_first_sample)


def _collate_first_sample(samples: list) -> dict:
    """RandCropByPosNegLabeld returns a list of crops per item; stack the (single) crops."""
    flat = [s[0] if isinstance(s, list) else s for s in samples]
    return {k: torch.stack([torch.as_tensor(s[k]) for s in flat]) for k in KEYS}
