"""Inference: sliding window, TTA, post-processing, export to the original geometry, batch, QA.

`from brats_seg.infer import Segmenter` is resolved lazily, so importing the light modules of this
package (prepare, postprocess, export) does not import torch.
"""
from __future__ import annotations

_LAZY = {"Segmenter", "ModelSpec", "Segmentation"}


def __getattr__(name: str):
    if name in _LAZY:
        from brats_seg.infer import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module 'brats_seg.infer' has no attribute {name!r}")
