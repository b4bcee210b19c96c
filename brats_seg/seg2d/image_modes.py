"""Every picture mode Pillow opens, as the HxWx3 uint8 RGB the 2D networks were trained on.

The model's normalisation expects 0..255 values. Pillow's plain `convert("RGB")` clips 16-bit and
32-bit greyscale to 0..255 (a 16-bit PNG comes out nearly all white), so wide modes are scaled
from their full range instead: 16-bit samples (I;16*, and I holding 0..65535, which is how Pillow
presents 16-bit PNG and TIFF greyscale) by 255/65535, float (F) samples from 0..1. A mode or a
range with no such meaning is refused with one line naming the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from brats_seg.errors import InputError

# modes Pillow converts to RGB without losing range (alpha is dropped: the network sees colour only)
CONVERTIBLE = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
INDEX_MASK_MODES = ("1", "L", "P", "I", *SIXTEEN_BIT)
UINT16_MAX = 65535


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _scaled(values: np.ndarray, top: float) -> np.ndarray:
    return np.clip(np.round(values.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def _wide_grey(image: Image.Image, path: Path) -> np.ndarray:
    """I;16*, I and F greyscale at their full range, as 0..255 grey."""
    values = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise InputError(path, f"float (F) image with values {_span(values)}; expected finite values "
                                   "in 0..1 (or an 8- or 16-bit image)")
        return _scaled(values, 1.0)
    if image.mode == "I" and (values.min() < 0 or values.max() > UINT16_MAX):
        raise InputError(path, f"32-bit integer (I) image with values {_span(values)}; expected 16-bit "
                               f"samples 0..{UINT16_MAX} (or an 8-bit image)")
    return _scaled(values, UINT16_MAX)


def _span(values: np.ndarray) -> str:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return "all non-finite"
    extra = "" if finite.size == values.size else f" and {values.size - finite.size} non-finite"
    return f"{finite.min():g}..{finite.max():g}{extra}"


def to_rgb8(image: Image.Image, path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB of an opened picture; InputError for a mode with no RGB meaning."""
    if image.mode in (*SIXTEEN_BIT, "I", "F"):
        return _grey_to_rgb(_wide_grey(image, path))
    if image.mode not in CONVERTIBLE:
        raise InputError(path, f"image mode {image.mode} cannot be read as a picture; expected an RGB, "
                               "greyscale (8/16-bit or 0..1 float), palette or CMYK image")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow's own route for palette transparency (no warning)
    return np.asarray(image.convert("RGB"))


def index_mask(image: Image.Image, path: Path) -> np.ndarray:
    """HxW int64 raw class indices of an index mask (palette, greyscale, 16/32-bit integer)."""
    if image.mode not in INDEX_MASK_MODES:
        raise InputError(path, f"mask mode {image.mode} holds no class indices; expected palette (P), "
                               "greyscale (L) or 16/32-bit integer (I;16, I) indices; for colour-coded "
                               "masks use colour labels (e.g. voc_colour_labels())")
    return np.asarray(image).astype(np.int64)
