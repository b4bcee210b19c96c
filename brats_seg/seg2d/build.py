"""What the 2D task needs from a dataset folder: split datasets, the keyed training dataset, the
data fingerprint, and the model metadata stored in checkpoints.

The training stream is the engine's (brats_seg.engine.loader): a sample is a pure function of
(seed, epoch, rank, index), since its image is picked from a seeded permutation and its
augmentation runs under a torch RNG seeded from the same key. So a resume at step k restarts the
sampler at k·batch and draws exactly the samples an uninterrupted run would have drawn, for any
number of DataLoader workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from brats_seg.engine.model_meta import ModelMeta
from brats_seg.errors import InputError
from brats_seg.seg2d.config import CAMVID_CLASSES, Config2D, Data2DConfig, Model2DConfig
from brats_seg.seg2d.data import SegmentationDataset, build_dataset
from brats_seg.seg2d.palette import VOC_CLASSES
from brats_seg.seg2d.transforms import IMAGENET_MEAN, IMAGENET_STD, Compose, Normalize, RandomCrop, RandomHorizontalFlip, eval_transform, train_transform


@dataclass
class Data2D:
    root: Path
    train: SegmentationDataset
    val: SegmentationDataset | None
    sha256: str
    split: dict


def open_split(d: Data2DConfig, root: Path, split: str, transform=None) -> SegmentationDataset:
    """The dataset of one split (see Data2DConfig for what a split name means per format)."""
    root = Path(root)
    options: dict = {"ignore_unlabelled": d.ignore_unlabelled, "reduce_zero_label": d.reduce_zero_label,
                     "strict": d.strict_colours}
    base, split_arg = root, (split or None)
    if d.format in ("folder", "voc_colour"):
        base, split_arg = (root / split if split else root), None
        options.update({k: v for k, v in (("image_tag", d.image_tag), ("mask_tag", d.mask_tag)) if v})
    if d.format == "folder":
        options.update(image_dir=d.image_dir, mask_dir=d.mask_dir, num_classes=d.num_classes,
                       ignore_index=d.ignore_index)
    try:
        return build_dataset(d.format, base, split_arg, transform, **options)
    except ValueError as exc:
        raise InputError(base, f"{exc} (data.format={d.format}, split={split!r})") from None


def train_transform_2d(cfg: Config2D, ignore_index: int) -> Compose:
    a = cfg.augment
    if not a.enabled:
        return Compose([Normalize(), RandomCrop(cfg.data.crop_size, ignore_index), RandomHorizontalFlip()])
    return train_transform(cfg.data.crop_size, tuple(a.scale_range), a.rotate_degrees, a.jitter, ignore_index)


def data_fingerprint(root: Path, datasets: list[SegmentationDataset]) -> str:
    """sha256 over (id, relative paths, file sizes) of every pair: a changed dataset refuses --resume."""
    from brats_seg.core.hashing import sha256_json

    rows = []
    for ds in datasets:
        for p in ds.pairs:
            rows.append([p.id, _rel(p.image, root), _rel(p.mask, root), p.image.stat().st_size, p.mask.stat().st_size])
    return sha256_json(rows)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def open_data_2d(root: Path, cfg: Config2D) -> Data2D:
    """Training split with augmentation, validation split (unless validation is off) without."""
    d = cfg.data
    train = open_split(d, root, d.train_split)
    train.transform = train_transform_2d(cfg, train.labels.ignore_index)
    val = open_split(d, root, d.val_split, eval_transform()) if cfg.validation.every_epochs > 0 else None
    split = {"train_split": d.train_split, "val_split": d.val_split if val else None,
             "train": [p.id for p in train.pairs], "val": [p.id for p in val.pairs] if val else []}
    return Data2D(Path(root), train, val, data_fingerprint(root, [train] + ([val] if val else [])), split)


class TrainStream(Dataset):
    """Keys (epoch, rank, index) -> augmented {"image", "label"} crops (see the module docstring)."""

    def __init__(self, base: SegmentationDataset, seed: int, world_size: int = 1) -> None:
        self.base, self.seed, self.world_size = base, seed, world_size

    def __len__(self) -> int:  # nominal; the sampler decides how many samples an epoch has
        return len(self.base)

    def image_index(self, epoch: int, rank: int, index: int) -> int:
        n = len(self.base)
        slot = index * self.world_size + rank
        perm = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, slot // n, 0x2D])).permutation(n)
        return int(perm[slot % n])

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        epoch, rank, index = key
        sample_seed = int(np.random.SeedSequence([self.seed, epoch, rank, index]).generate_state(1, np.uint64)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            item = self.base[self.image_index(epoch, rank, index)]
        return {"image": item["image"], "label": item["mask"]}


def model_kwargs(m: Model2DConfig, num_classes: int) -> dict:
    """Keyword arguments of the registry factory (without the pretrained file: inference rebuilds from these)."""
    kw: dict = {"num_classes": num_classes, "backbone": m.backbone, "aux": m.aux}
    if m.name == "deeplabv3plus":
        kw.update(output_stride=m.output_stride, dropout=m.dropout, aspp_channels=m.aspp_channels,
                  width_mult=m.width_mult)
    elif m.backbone == "vgg16":
        kw.update(fc_channels=m.fc_channels, dropout=m.dropout)
    else:
        kw.update(output_stride=m.output_stride, width_mult=m.width_mult)
    return kw


def class_names(fmt: str, num_classes: int) -> list[str]:
    known = {"voc": VOC_CLASSES, "voc_colour": VOC_CLASSES, "camvid": CAMVID_CLASSES}.get(fmt, ())
    return [known[i] if i < len(known) else f"class_{i}" for i in range(num_classes)]


def model_meta_2d(cfg: Config2D, data: Data2D) -> ModelMeta:
    """What evaluation, prediction and quantization need to rebuild the model and its data."""
    from brats_seg.core.typed_config import to_dict

    n = data.train.num_classes
    teacher = str(Path(cfg.distill.teacher).resolve()) if cfg.distill.teacher else None
    return ModelMeta(task="2d", model=cfg.model.name, model_kwargs=model_kwargs(cfg.model, n), num_classes=n,
                     ignore_index=data.train.labels.ignore_index, class_names=class_names(cfg.data.format, n),
                     data=to_dict(cfg.data), normalize={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                     distilled_from=teacher)


def build_model_2d(cfg: Model2DConfig, meta: ModelMeta, load_pretrained: bool) -> torch.nn.Module:
    """The registry model; ImageNet backbone weights from `pretrained_backbone` on a fresh run only."""
    from brats_seg.models.registry import create_model

    extra = {"pretrained_backbone": cfg.pretrained_backbone} if (load_pretrained and cfg.pretrained_backbone) else {}
    try:
        return create_model(meta.model, **meta.model_kwargs, **extra)
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError("model", str(exc).strip("'\""))
