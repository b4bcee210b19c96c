"""Take arrays from preprocessed space back to the original file's grid, exactly.

Undo order: resampling (back to the cropped grid), reorientation (flips and transposes, giving
the cropped block in file axes), cropping (pad with background). At native spacing the round trip
of a label map is the identity.
"""
from __future__ import annotations

import numpy as np

from brats_seg.io.geometry import Geometry
from brats_seg.preprocess import spatial


def labels_to_original(labels: np.ndarray, entry: dict) -> np.ndarray:
    """(X, Y, Z) canonical labels in preprocessed space -> uint8 labels on the original grid."""
    src = entry["source"]
    cropped = spatial.resample_labels(np.asarray(labels, dtype=np.uint8), tuple(src["cropped_shape"]))
    block = spatial.undo_reorient(cropped, np.asarray(src["ornt"], dtype=float))
    return spatial.uncrop(block, src["crop_box"], tuple(src["geometry"]["shape"]), fill=0)


def probabilities_to_original(probs: np.ndarray, entry: dict, background: float | list[float] = 0.0) -> np.ndarray:
    """(K, X, Y, Z) probabilities in preprocessed space -> (K, *original shape), linear resampling.

    `background` fills voxels outside the crop (0 for region sigmoids; [1, 0, 0, 0] for softmax).
    """
    src = entry["source"]
    cropped = spatial.resample_image(np.asarray(probs, dtype=np.float32), tuple(src["cropped_shape"]), order=1)
    block = spatial.undo_reorient(cropped, np.asarray(src["ornt"], dtype=float))
    fill = np.broadcast_to(np.asarray(background, dtype=np.float32), (block.shape[0],))
    return np.stack([spatial.uncrop(ch, src["crop_box"], tuple(src["geometry"]["shape"]), fill=f)
                     for ch, f in zip(block, fill)])


def original_geometry(entry: dict) -> Geometry:
    """The geometry of the case's original files, for writing masks back."""
    return Geometry.from_dict(entry["source"]["geometry"])
