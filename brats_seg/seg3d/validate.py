"""Validation: whole cases through predict's sliding window, Dice per region.

The tiler, its settings (Gaussian blending, brain-only window placement, grown windows) and the
decoding of outputs into labels are predict's own (infer/sliding_window.py, io/regions.py), minus
TTA (predict's default has none): the checkpoint kept as best.pt is the best one for predict.

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

from brats_seg.engine.distributed import DistInfo, all_reduce_sum
from brats_seg.infer.sliding_window import network_predictor, sliding_window, window_for
from brats_seg.io.labels import REGION_NAMES
from brats_seg.io.regions import activate, background_fill, dice_per_region_torch, probabilities_to_labels
from brats_seg.preprocess.store import open_image, open_seg


def validate(model: torch.nn.Module, root: Path, entries: list[dict], info: DistInfo, patch_size: tuple[int, int, int],
             overlap: float, sw_batch_size: int, loss_mode: str,
             autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, float]:
    """{'val_dice_WT', 'val_dice_TC', 'val_dice_ET', 'val_dice_mean'} over `entries` (all ranks)."""
    table = torch.zeros(len(entries), len(REGION_NAMES), dtype=torch.float64, device=info.device)
    window = window_for(model, tuple(patch_size), overlap, sw_batch_size)
    predict = network_predictor(model, autocast)
    was_training = model.training
    model.eval()
    try:
        for i in range(info.rank, len(entries), info.world_size):
            image = torch.from_numpy(np.ascontiguousarray(open_image(root, entries[i]), dtype=np.float32))
            ref = torch.from_numpy(np.ascontiguousarray(open_seg(root, entries[i]))).to(info.device)
            probs = sliding_window(image.to(info.device), predict, window, fill=background_fill(loss_mode),
                                   activation=lambda logits: activate(logits, loss_mode))
            table[i] = dice_per_region_torch(probabilities_to_labels(probs, loss_mode), ref)
    finally:
        model.train(was_training)
    all_reduce_sum(table, info)
    per_region = table.mean(dim=0).tolist() if len(entries) else [float("nan")] * len(REGION_NAMES)
    out = {f"val_dice_{name}": float(v) for name, v in zip(REGION_NAMES, per_region)}
    out["val_dice_mean"] = float(np.mean(per_region))
    return out
