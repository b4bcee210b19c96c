"""Post-processing of canonical label maps (0 bg, 1 NCR, 2 ED, 3 ET), each rule optional.

- Small enhancing tumour relabelled as necrosis: BraTS scores a case without enhancing tumour as
  ET Dice 1 only if the prediction has none either, so a few false ET voxels cost a whole 0.
  The winners of BraTS 2019-2021 (nnU-Net, Isensee et al.) turn ET into NCR when the predicted ET
  volume is below a threshold tuned on validation data; the tumour core stays the same.
- Tiny disconnected tumour components removed: isolated specks far from the tumour are noise.
- Components small beside the largest removed (a fraction of its volume): a short-trained model's
  false positives are blobs away from the tumour, whose size an absolute threshold cannot know
  in advance; 1.0 keeps the largest component only (and any tied with it; wrong for multifocal
  tumours, so chosen by cross-validation, `bench learn`).

Thresholds are in mm³ so that they mean the same at any voxel size; pass voxel_mm3=1 to think in
voxels. 0 disables a rule (the default, since a good value depends on the data and the model).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from brats_seg.preprocess.spatial import nonzero_box

NCR, ED, ET = 1, 2, 3


@dataclass(frozen=True)
class PostprocessConfig:
    et_min_mm3: float = 0.0  # total ET volume below this -> all ET becomes NCR; 0: off
    min_component_mm3: float = 0.0  # tumour components smaller than this -> background; 0: off
    min_component_fraction: float = 0.0  # components below this fraction of the largest -> background; 0: off
    connectivity: int = 3  # scipy rank: 1 faces (6-neighbourhood), 2 edges (18), 3 corners (26)

    def __post_init__(self) -> None:
        for name, value in (("et_min_mm3", self.et_min_mm3), ("min_component_mm3", self.min_component_mm3)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} is {value}; post-processing thresholds must be finite and >= 0 "
                                 "(0 disables a rule)")
        if not 0.0 <= self.min_component_fraction <= 1.0:
            raise ValueError(f"min_component_fraction is {self.min_component_fraction}; expected a fraction of the "
                             "largest component's volume in [0, 1] (0 disables the rule, 1 keeps the largest only)")
        if self.connectivity not in (1, 2, 3):
            raise ValueError(f"connectivity must be 1, 2 or 3, got {self.connectivity}")

    def to_dict(self) -> dict:
        """The settings; min_component_fraction only when on, so that masks made before the rule
        existed keep their skip key (infer.batch) and are not predicted again."""
        d = asdict(self)
        if not d["min_component_fraction"]:
            del d["min_component_fraction"]
        return d


def relabel_small_et(labels: np.ndarray, voxel_mm3: float, min_mm3: float) -> np.ndarray:
    """ET -> NCR when the total ET volume is below `min_mm3` (a copy only when something changes)."""
    if min_mm3 <= 0:
        return labels
    et = labels == ET
    count = int(np.count_nonzero(et))
    if count == 0 or count * voxel_mm3 >= min_mm3:
        return labels
    out = labels.copy()
    out[et] = NCR
    return out


def remove_small_components(labels: np.ndarray, voxel_mm3: float, min_mm3: float,
                            connectivity: int = 3, min_fraction: float = 0.0) -> np.ndarray:
    """Set tumour components (connected over all tumour labels) smaller than `min_mm3`, or smaller
    than `min_fraction` of the largest component, to background."""
    if min_mm3 <= 0 and min_fraction <= 0:
        return labels
    tumour = labels > 0
    if not tumour.any():
        return labels
    box = tuple(slice(lo, hi) for lo, hi in nonzero_box(tumour))  # label the tumour's box only
    structure = ndimage.generate_binary_structure(3, connectivity)
    components, n = ndimage.label(tumour[box], structure=structure)
    sizes = np.bincount(components.ravel(), minlength=n + 1) * voxel_mm3
    sizes[0] = 0.0
    small = (sizes < min_mm3) | (sizes < min_fraction * sizes.max())
    small[0] = False
    if not small.any():
        return labels
    out = labels.copy()
    out[box][small[components]] = 0
    return out


def postprocess(labels: np.ndarray, voxel_mm3: float, cfg: PostprocessConfig) -> np.ndarray:
    """Components first, then the ET rule (so specks removed do not count towards ET volume)."""
    labels = remove_small_components(labels, voxel_mm3, cfg.min_component_mm3, cfg.connectivity,
                                     cfg.min_component_fraction)
    return relabel_small_et(labels, voxel_mm3, cfg.et_min_mm3)
