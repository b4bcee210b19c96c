"""Colour palettes: the PASCAL VOC colour map, colour masks -> class indices, and back.

VOC stores masks as palette ("P") PNGs whose pixel values already are class indices; some tools
export the same masks as RGB colours instead. `colour_to_index` maps those colours back through
a palette. Colours that belong to no class become `ignore_index` (anti-aliased or resampled
edges produce such colours), or raise InputError with `strict=True`.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from brats_seg.errors import InputError

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
VOC_IGNORE_COLOUR = (224, 224, 192)  # palette entry 255: object boundaries / "void"


def voc_palette(n: int = 256) -> np.ndarray:
    """The VOC colour map: bits of the class index are spread over R, G, B from the high bit down."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for index in range(n):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def _pack(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def colour_to_index(rgb: np.ndarray, colours: np.ndarray, ignore_index: int = 255,
                    ignore_colours: tuple[tuple[int, int, int], ...] = (VOC_IGNORE_COLOUR,),
                    strict: bool = False, where: str = "mask") -> np.ndarray:
    """Map an HxWx3 colour mask to HxW class indices; row i of `colours` is the colour of class i."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(where, f"colour mask must be HxWx3 RGB, got shape {rgb.shape}")
    lut_keys = _pack(np.asarray(colours, dtype=np.uint8))
    if len(np.unique(lut_keys)) != len(lut_keys):
        raise ValueError("palette has repeated colours; the colour -> class mapping would be ambiguous")
    unique, inverse = np.unique(_pack(rgb), return_inverse=True)
    values = np.full(len(unique), -1, dtype=np.int64)
    for cls, key in enumerate(lut_keys):
        values[unique == key] = cls
    ignore_keys = _pack(np.asarray(ignore_colours, dtype=np.uint8).reshape(-1, 3))
    values[np.isin(unique, ignore_keys) & (values < 0)] = ignore_index
    unknown = unique[values < 0]
    if strict and len(unknown):
        shown = ", ".join(f"({k >> 16 & 255}, {k >> 8 & 255}, {k & 255})" for k in unknown[:5].tolist())
        raise InputError(where, f"{len(unknown)} colour(s) not in the palette, e.g. {shown}; "
                                "expected only class colours (or use strict=False to ignore them)")
    values[values < 0] = ignore_index
    dtype = np.uint8 if max(len(lut_keys) - 1, ignore_index) < 256 else np.int64
    return values[inverse.reshape(rgb.shape[:2])].astype(dtype)


def index_to_colour(mask: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """HxW indices -> HxWx3 colours (for viewing predictions); indices beyond the palette -> black."""
    palette = voc_palette(256) if palette is None else np.asarray(palette, dtype=np.uint8)
    mask = np.asarray(mask, dtype=np.int64)
    out = np.zeros(mask.shape + (3,), dtype=np.uint8)
    valid = (mask >= 0) & (mask < len(palette))
    out[valid] = palette[mask[valid]]
    return out


def to_palette_image(mask: np.ndarray, palette: np.ndarray | None = None) -> Image.Image:
    """HxW uint8 indices as a VOC-style "P" PNG image: indices stay indices, viewers show colours."""
    mask = np.asarray(mask)
    if mask.min(initial=0) < 0 or mask.max(initial=0) > 255:
        raise ValueError("palette images hold indices 0..255 only")
    palette = voc_palette(256) if palette is None else np.asarray(palette, dtype=np.uint8)
    image = Image.fromarray(mask.astype(np.uint8))  # mode "L"; putpalette turns it into "P"
    image.putpalette(palette.reshape(-1).tolist())
    return image
