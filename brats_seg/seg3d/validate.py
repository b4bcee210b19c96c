"""Validation: Gaussian-weighted sliding-window prediction of whole cases, Dice per region.

Cases are dealt to ranks round-robin; each rank fills its rows of a (cases x regions) table and
one all-reduce gives every rank the full table, so every rank runs the same collectives and
reaches the same best-checkpoint and plateau decisions.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from brats_seg.evaluate.dice import REGION_NAMES, dice_per_region_torch
from brats_seg.preprocess.store import open_image, open_seg
from brats_seg.engine.distributed import DistInfo, all_reduce_sum


def logits_to_labels(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, C, ...) logits -> canonical labels (B, ...): sigmoid regions or softmax classes."""
    if mode == "regions":
        from brats_seg.seg3d.losses import regions_to_labels

        return regions_to_labels(torch.sigmoid(logits.float()))
    return logits.argmax(dim=1)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, image: torch.Tensor, patch_size: tuple[int, int, int],
                   overlap: float, sw_batch_size: int,
                   autocast: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    """(1, C, X, Y, Z) image -> (1, K, X, Y, Z) logits (Gaussian blending of overlapping windows)."""
    from monai.inferers import sliding_window_inference

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with autocast():
            out = model(x)
        return (out[0] if isinstance(out, (list, tuple)) else out).float()

    return sliding_window_inference(image, roi_size=patch_size, sw_batch_size=sw_batch_size,
                                    predictor=predictor, overlap=overlap, mode="gaussian")


def validate(model: torch.nn.Module, root: Path, entries: list[dict], info: DistInfo, patch_size: tuple[int, int, int],
             overlap: float, sw_batch_size: int, loss_mode: str,
             autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, float]:
    """{'val_dice_WT', 'val_dice_TC', 'val_dice_ET', 'val_dice_mean'} over `entries` (all ranks)."""
    table = torch.zeros(len(entries), len(REGION_NAMES), dtype=torch.float64, device=info.device)
    was_training = model.training
    model.eval()
    try:
        for i in range(info.rank, len(entries), info.world_size):
            image = torch.from_numpy(np.ascontiguousarray(open_image(root, entries[i]), dtype=np.float32))
            ref = torch.from_numpy(np.ascontiguousarray(open_seg(root, entries[i]))).to(info.device)
            logits = predict_logits(model, image[None].to(info.device), patch_size, overlap, sw_batch_size, autocast)
            table[i] = dice_per_region_torch(logits_to_labels(logits, loss_mode)[0], ref)
    finally:
        model.train(was_training)
    all_reduce_sum(table, info)
    per_region = table.mean(dim=0).tolist() if len(entries) else [float("nan")] * len(REGION_NAMES)
    out = {f"val_dice_{name}": float(v) for name, v in zip(REGION_NAMES, per_region)}
    out["val_dice_mean"] = float(np.mean(per_region))
    return out
