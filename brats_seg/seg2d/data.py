"""2D segmentation datasets: image + mask pairs from VOC, CamVid, ADE20K or plain folders.

Listing (which files pair up) is separate from decoding (what mask values mean, see
`labels.LabelSpec`) and from augmentation (`transforms`), so one dataset class serves every
layout. Items are dicts {"image": 3xHxW float, "mask": HxW int64, "id": str}.
Bad files raise InputError naming the file: unreadable images, masks of another size, unknown
mask values, ids listed in a split file but missing on disk.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from brats_seg.errors import InputError
from brats_seg.seg2d.image_modes import index_mask, to_rgb8
from brats_seg.seg2d.labels import LabelSpec, ade20k_labels, camvid_labels, voc_colour_labels, voc_labels
from brats_seg.seg2d.transforms import eval_transform, image_to_tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class SamplePair:
    id: str
    image: Path
    mask: Path


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(path, f"cannot read image ({exc.__class__.__name__}: {exc}); "
                               "expected a readable JPEG/PNG/BMP/TIFF file") from None
    return image


def read_image(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB; greyscale, 16-bit, float, palette, RGBA and CMYK pictures are converted at
    their full range (see image_modes); EXIF rotation is not applied."""
    return np.array(to_rgb8(_open(Path(path)), Path(path)))


def read_mask(path: str | Path, labels: LabelSpec) -> np.ndarray:
    """Raw mask values: HxW for index masks (palette PNGs give their indices), HxWx3 for colour masks."""
    image = _open(Path(path))
    if labels.is_colour:
        return np.asarray(image.convert("RGB"))
    return index_mask(image, Path(path))


def load_pair(pair: SamplePair, labels: LabelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Image (HxWx3 uint8) and decoded labels (HxW int64), with the size check."""
    image = read_image(pair.image)
    raw = read_mask(pair.mask, labels)
    if raw.shape[:2] != image.shape[:2]:
        (mh, mw), (ih, iw) = raw.shape[:2], image.shape[:2]
        raise InputError(pair.mask, f"mask is {mw}x{mh} (WxH) but its image {pair.image.name} is "
                                    f"{iw}x{ih}; expected the same size")
    return image, labels.decode(raw, str(pair.mask))


class SegmentationDataset(Dataset):
    """Pairs + label spec + joint transform -> {"image", "mask", "id"}."""

    def __init__(self, pairs: list[SamplePair], labels: LabelSpec,
                 transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None):
        if not pairs:
            raise ValueError("dataset has no image/mask pairs")
        self.pairs, self.labels = list(pairs), labels
        self.transform = transform if transform is not None else eval_transform()

    @property
    def num_classes(self) -> int:
        return self.labels.num_classes

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        image, mask = load_pair(pair, self.labels)
        x, y = self.transform(image_to_tensor(image), torch.from_numpy(mask))
        return {"image": x, "mask": y, "id": pair.id}


# ------------------------------------------------------------------------------- listings
def _files_by_key(folder: Path, tag: str, suffixes: tuple[str, ...]) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(folder, "folder not found; expected a folder of images or masks")
    out = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in suffixes and p.stem.endswith(tag) and not p.name.startswith("."):
            out[p.stem[: len(p.stem) - len(tag)]] = p
    return out


def folder_pairs(image_dir: str | Path, mask_dir: str | Path, image_tag: str = "", mask_tag: str = "",
                 mask_suffixes: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff")) -> list[SamplePair]:
    """Pair images and masks by file stem; `*_tag` strips a stem ending ("1_image" / "1_target").

    Every image needs a mask and every mask an image: an unmatched file usually means a typo or a
    half-copied dataset, so it is reported rather than skipped.
    """
    if Path(image_dir) == Path(mask_dir) and image_tag == mask_tag:
        raise ValueError("image and mask folders are the same; give image_tag/mask_tag to tell them apart")
    images = _files_by_key(Path(image_dir), image_tag, IMAGE_SUFFIXES)
    masks = _files_by_key(Path(mask_dir), mask_tag, mask_suffixes)
    lonely_images, lonely_masks = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    if lonely_images or lonely_masks:
        raise InputError(mask_dir, f"unmatched files: images without mask {lonely_images[:5]}, "
                                   f"masks without image {lonely_masks[:5]}; expected one mask per image, same stem")
    if not images:
        raise InputError(image_dir, f"no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return [SamplePair(k, images[k], masks[k]) for k in sorted(images)]


def voc_pairs(root: str | Path, split: str | None = "train") -> list[SamplePair]:
    """VOC layout: JPEGImages/<id>.jpg, SegmentationClass/<id>.png, ImageSets/Segmentation/<split>.txt.

    split=None takes every mask in SegmentationClass (for exports that have no ImageSets).
    """
    root = Path(root)
    if split is None:
        return _voc_from_ids(root, sorted(p.stem for p in (root / "SegmentationClass").glob("*.png")))
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise InputError(listing, "split list not found; expected one image id per line "
                                  "(or use split=None to take every mask in SegmentationClass)")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    return _voc_from_ids(root, ids)


def _voc_from_ids(root: Path, ids: list[str]) -> list[SamplePair]:
    pairs = [SamplePair(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids]
    for p in pairs:
        for f in (p.image, p.mask):
            if not f.is_file():
                raise InputError(f, f"listed id {p.id!r} has no file here; expected JPEGImages/<id>.jpg "
                                    "and SegmentationClass/<id>.png")
    if not pairs:
        raise InputError(root, "no samples found in the VOC layout")
    return pairs


def build_dataset(fmt: str, root: str | Path, split: str | None = None, transform=None, **options) -> SegmentationDataset:
    """One entry point for configs: fmt in voc | voc_colour | camvid | ade20k | folder.

    options: strict (voc_colour), ignore_unlabelled (camvid), reduce_zero_label (ade20k),
    image_dir/mask_dir/image_tag/mask_tag/num_classes/ignore_index (folder).
    """
    root = Path(root)
    if fmt == "voc":
        return SegmentationDataset(voc_pairs(root, split), voc_labels(), transform)
    if fmt == "voc_colour":
        pairs = folder_pairs(root, root, options.get("image_tag", "_image"), options.get("mask_tag", "_target"))
        return SegmentationDataset(pairs, voc_colour_labels(options.get("strict", False)), transform)
    if fmt == "camvid":
        split = split or "train"
        labels = camvid_labels(options.get("ignore_unlabelled", True))
        return SegmentationDataset(folder_pairs(root / split, root / f"{split}annot"), labels, transform)
    if fmt == "ade20k":  # full release: images/<split>/, annotations/<split>/; samples: flat
        sub = split or ""
        pairs = folder_pairs(root / "images" / sub, root / "annotations" / sub)
        return SegmentationDataset(pairs, ade20k_labels(options.get("reduce_zero_label", True)), transform)
    if fmt == "folder":
        if "num_classes" not in options:
            raise ValueError("folder datasets need num_classes")
        pairs = folder_pairs(root / options.get("image_dir", "images"), root / options.get("mask_dir", "masks"),
                             options.get("image_tag", ""), options.get("mask_tag", ""))
        labels = LabelSpec(int(options["num_classes"]), int(options.get("ignore_index", 255)))
        return SegmentationDataset(pairs, labels, transform)
    raise ValueError(f"unknown 2D dataset format {fmt!r}; valid: voc, voc_colour, camvid, ade20k, folder")
