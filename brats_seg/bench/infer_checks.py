"""Why `bench infer`'s two predictions differ: the same windows over our crop, and the truth.

The reference tiles the whole 240x240x155 volume, so most of its windows are largely empty
background; ours tiles the brain's box only. With instance normalisation inside the network, a
window's statistics depend on how much background it holds, so the same weights answer
differently for the same voxel. Two extra measurements separate that from our implementation:
- MONAI's sliding_window_inference over *our* prepared (cropped) input, with the same window,
  overlap and Gaussian: if ours agrees with it, our sliding window computes what MONAI's does;
- Dice of each prediction against the case's label file, when it has one: which tiling is right.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from brats_seg.evaluate.dice import dice_per_region, mean_dice


def crop_reference_labels(model: Path, case: Path, window: int, threads: int) -> np.ndarray:
    """MONAI's sliding_window_inference (Gaussian, overlap 0.5) over our in-memory preprocessing of
    the case, put back on the file grid by our inverse: canonical uint8 labels."""
    from brats_seg.infer.segmenter import Segmenter

    torch.set_num_threads(threads)
    return _crop_labels(Segmenter.from_run(model), case, window)


def _crop_labels(loaded, case: Path, window: int) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    from brats_seg.infer.prepare import prepare
    from brats_seg.infer.segmenter import Segmenter

    seg = Segmenter(loaded.model, dataclasses.replace(loaded.spec, patch_size=(window,) * 3), overlap=0.5)
    image, entry = prepare(seg._resolve(case, None), seg.spec.spacing)
    volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    with torch.inference_mode():
        logits = sliding_window_inference(volume, (window,) * 3, 1, seg._forward, overlap=0.5, mode="gaussian")
        probs = seg._activate(torch.as_tensor(logits)[0])
    labels, _ = seg._restore(probs, entry, keep=False)
    return labels


def truth_labels(case: Path, channels: list[str]) -> np.ndarray | None:
    """The case folder's label file in canonical labels, or None when it has none."""
    from brats_seg.infer.prepare import from_case_dir
    from brats_seg.ingest.layouts import discover
    from brats_seg.io.labels import to_canonical
    from brats_seg.io.volume import read_volume

    specs = discover(Path(case), "auto", tuple(channels))
    if len(specs) != 1 or len(specs[0].segs) != 1:
        return None
    convention = from_case_dir(case, channels).label_convention
    return to_canonical(read_volume(specs[0].segs[0])[0], convention)


def region_agreement(ours: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Dice per region (WT, TC, ET) between two canonical label maps, plus their mean."""
    scores = dice_per_region(ours, reference)
    return {**scores, "mean": mean_dice(scores)}


def diagnose(model: Path, case: Path, window: int, threads: int, ours: np.ndarray, monai: np.ndarray) -> dict:
    """Agreement of ours with MONAI over our crop, and every prediction's Dice against the truth."""
    from brats_seg.infer.segmenter import Segmenter

    torch.set_num_threads(threads)
    loaded = Segmenter.from_run(model)  # once: its weights for the crop run, its channels for the truth
    crop = _crop_labels(loaded, case, window)
    out: dict = {"agreement_same_crop": region_agreement(ours, crop),
                 "monai_crop_vs_monai_whole": region_agreement(crop, monai)}
    truth = truth_labels(case, list(loaded.spec.channels))
    if truth is not None:
        out["dice_vs_truth"] = {}
        for name, labels in (("ours", ours), ("monai", monai), ("monai_same_crop", crop)):
            out["dice_vs_truth"][name] = region_agreement(labels, truth)
    return out
