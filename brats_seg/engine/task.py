"""What a training task hands the engine: everything that differs between 3D and 2D.

The engine (brats_seg.engine.loop) owns the loop, stop votes, time budget, checkpoints, epoch
close, best-checkpoint keeping, run.json, DDP wrapping, start files and resume; a Task supplies
the model + loss + metadata, the keyed training dataset, validation with its score key, the
validation part of the epoch line and the curves to plot. Tasks are plain values built by
seg3d.trainer.task_3d and seg2d.trainer.task_2d; there is no subclassing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from brats_seg.engine.metrics_log import Curves
from brats_seg.engine.model_meta import ModelMeta


@dataclass(frozen=True)
class Built:
    """A task's freshly built model (on the CPU), its loss and its metadata.

    wrap: applied to the (DDP/compiled) training model, e.g. to run a frozen teacher beside it.
    """

    model: torch.nn.Module
    loss_fn: torch.nn.Module
    meta: ModelMeta
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None


@dataclass(frozen=True)
class DataRecord:
    """How run.json names the training data, and the identity a resume must match."""

    path: Path  # the manifest (3D) or dataset root (2D)
    sha256: str
    split: dict
    identity: str
    fingerprint: str | None = None
    notes: tuple[str, ...] = ()  # printed once at start (e.g. unlabelled cases left out)


@dataclass(frozen=True, kw_only=True)
class Task:
    """One training task. cfg is its root config with the engine's shared sections (seed, optim,
    schedule, train, distributed, data.batch_size/num_workers, validation.every_epochs)."""

    name: str  # '3d' | '2d'
    cfg: Any
    data: DataRecord
    build: Callable[[bool], Built]  # fresh: a new run (not a resume)
    dataset: Callable[[int], Dataset]  # world_size -> the keyed (epoch, rank, index) dataset
    validate: Callable[[Any, Any], dict] | None  # (TrainState, Session) -> metrics; None: nothing to validate
    score_key: str  # the validation metric that picks best.pt (higher is better)
    epoch_text: Callable[[dict, float], str]  # (epoch record with validation, best) -> its text
    curves: Curves
    spatial_dims: int = 3  # of the model's inputs (picks the memory format)
    legacy_hashes: tuple[str, ...] = ()  # config hashes older versions wrote for this config
