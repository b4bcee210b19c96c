"""How a dataset's mask files encode classes, and turning them into 0..K-1 plus an ignore index.

Formats differ: VOC palette PNGs hold indices with 255 = boundary/ignore; colour masks need a
palette; CamVid (SegNet version) uses 11 = "unlabelled"; ADE20K uses 0 = "other" and 1..150.
A `LabelSpec` says which raw values are ignored and how the rest shift, so every dataset ends up
with classes 0..num_classes-1 and one ignore index. Unexpected raw values raise InputError: a
mask with a class the model does not have is a data problem, not something to paper over.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from brats_seg.errors import InputError
from brats_seg.seg2d.palette import VOC_IGNORE_COLOUR, colour_to_index, voc_palette

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class LabelSpec:
    """Raw mask values -> training labels.

    ignore_values: raw values mapped to `ignore_index` (besides `ignore_index` itself).
    shift: added to every other raw value (ADE20K: -1 turns 1..150 into 0..149).
    colours: for RGB masks, the colour of class i in row i; `ignore_colours` map to ignore;
        other colours map to ignore, or raise when `strict_colours`.
    """

    num_classes: int
    ignore_index: int = 255
    ignore_values: tuple[int, ...] = ()
    shift: int = 0
    colours: tuple[Colour, ...] | None = None
    ignore_colours: tuple[Colour, ...] = (VOC_IGNORE_COLOUR,)
    strict_colours: bool = False

    @property
    def is_colour(self) -> bool:
        return self.colours is not None

    def decode(self, raw: np.ndarray, where: str = "mask") -> np.ndarray:
        """HxW (index masks) or HxWx3 (colour masks) -> HxW int64 labels."""
        if self.is_colour:
            labels = colour_to_index(raw, np.asarray(self.colours, dtype=np.uint8), self.ignore_index,
                                     self.ignore_colours, self.strict_colours, where)
            return labels.astype(np.int64)
        if raw.ndim != 2:
            raise InputError(where, f"mask has shape {raw.shape}, expected a single-channel index mask "
                                    "(for RGB colour masks use colour labels, e.g. voc_colour_labels())")
        raw = raw.astype(np.int64)
        ignored = np.isin(raw, (self.ignore_index, *self.ignore_values))
        labels = np.where(ignored, self.ignore_index, raw + self.shift)
        bad = np.unique(raw[~ignored & ((labels < 0) | (labels >= self.num_classes))])
        if len(bad):
            raise InputError(where, f"mask values {bad[:10].tolist()} are outside the {self.num_classes} "
                                    f"classes (raw values {-self.shift}..{self.num_classes - 1 - self.shift} expected, "
                                    f"ignored: {sorted({self.ignore_index, *self.ignore_values})})")
        return labels


def voc_labels() -> LabelSpec:
    """VOC palette PNGs: values are indices 0..20, 255 = boundary (ignored)."""
    return LabelSpec(num_classes=21)


def voc_colour_labels(strict: bool = False) -> LabelSpec:
    """VOC ground truth rendered as RGB: colours through the VOC palette, (224,224,192) = ignore."""
    colours = tuple(tuple(int(v) for v in c) for c in voc_palette(21))
    return LabelSpec(num_classes=21, colours=colours, strict_colours=strict)


def camvid_labels(ignore_unlabelled: bool = True, ignore_index: int = 255) -> LabelSpec:
    """CamVid (SegNet version) 0..10 classes; 11 = "unlabelled", ignored unless asked otherwise."""
    if ignore_unlabelled:
        return LabelSpec(num_classes=11, ignore_index=ignore_index, ignore_values=(11,))
    return LabelSpec(num_classes=12, ignore_index=ignore_index)


def ade20k_labels(reduce_zero_label: bool = True) -> LabelSpec:
    """ADE20K SceneParsing: 0 = "other" (ignored), 1..150 -> 0..149; or keep 0 as a 151st class."""
    if reduce_zero_label:
        return LabelSpec(num_classes=150, ignore_values=(0,), shift=-1)
    return LabelSpec(num_classes=151)
