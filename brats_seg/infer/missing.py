"""Predicting without one or more MRI sequences (`predict --missing flair`).

A sequence that was never acquired is fed to the network as a channel of zeros, the value every
voxel of a z-scored channel has on average, and exactly what training's modality dropout
(`augment.modality_dropout`, seg3d/augment.py) put in a dropped channel. A network that never saw
such a channel during training has no defined answer to it, so only a model whose metadata
records dropout > 0 accepts missing sequences. The images that are given keep the grid and the
crop they would have had: the reference channel (whose grid the mask is written on) is t1ce,
unless t1ce is the one missing, then the first present channel in the model's order.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from brats_seg.errors import InputError

REFERENCE = "t1ce"
FLAG = "--missing"


def parse_missing(text: str | None, channels: Sequence[str]) -> tuple[str, ...]:
    """'flair' or 't2,flair' (BraTS 2023 names t1n, t1c, t2w, t2f accepted) -> canonical channel
    names in the model's order; refuses unknown names, repeats, and every channel missing."""
    from brats_seg.ingest.layouts import channel_of

    if text is None:
        return ()
    names = [n.strip() for n in str(text).split(",")]
    if not all(names):
        raise InputError(FLAG, f"{text!r} has an empty name; expected e.g. flair or t2,flair")
    canonical = []
    for name in names:
        channel = channel_of(name) or name.lower()
        if channel not in channels:
            raise InputError(FLAG, f"{name!r} is not a channel of the model; expected names among "
                                   f"{', '.join(channels)}")
        if channel in canonical:
            raise InputError(FLAG, f"{text!r} names {channel} twice; expected each missing channel once")
        canonical.append(channel)
    if len(canonical) == len(channels):
        raise InputError(FLAG, f"{text!r} leaves no image; at least one of {', '.join(channels)} must be given")
    return tuple(c for c in channels if c in canonical)


def check_model_allows(missing: Sequence[str], modality_dropout: float, model: str) -> None:
    """A model trained without modality dropout refuses missing channels (one line naming the option)."""
    if missing and not modality_dropout > 0:
        raise InputError(FLAG, f"{model} was trained without modality dropout (augment.modality_dropout 0), so "
                               f"its output without {', '.join(missing)} is undefined; give every image, or use "
                               "a model trained with augment.modality_dropout > 0 (e.g. 0.25)")


def present_channels(channels: Sequence[str], missing: Sequence[str]) -> list[str]:
    """The channels read from disk, in the model's order."""
    return [c for c in channels if c not in missing]


def reference_channel(channels: Sequence[str], missing: Sequence[str] = ()) -> str:
    """The channel whose grid the mask is written on: t1ce, else the first present channel."""
    present = present_channels(channels, missing)
    return REFERENCE if REFERENCE in present else present[0]


def fill_missing(image: np.ndarray, present: Sequence[str], channels: Sequence[str]) -> np.ndarray:
    """(P, X, Y, Z) preprocessed channels `present` -> (C, X, Y, Z) in `channels` order, the
    missing ones 0 (as a z-scored channel's mean, and as modality dropout trains the network)."""
    if list(present) == list(channels):
        return image
    out = np.zeros((len(channels),) + tuple(image.shape[1:]), dtype=image.dtype)
    for i, name in enumerate(present):
        out[list(channels).index(name)] = image[i]
    return out
