"""The 3D task (task '3d' of `brats-seg train`): patches of a preprocessed BraTS dataset, the
Attention U-Net (or a MONAI alternative) with its region/label loss, and sliding-window Dice
validation (seg3d.validate). The loop, checkpoints, resume, DDP and budget are the engine's.

Exit codes: see brats_seg.engine.runtime (0 done, 2 bad input, 75 pre-empted by SIGTERM).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from brats_seg.engine import checkpoint as ckpt
from brats_seg.engine.distributed import pick_device
from brats_seg.engine.loop import train
from brats_seg.engine.metrics_log import Curves
from brats_seg.engine.runtime import amp_name
from brats_seg.engine.session import Session
from brats_seg.engine.state import TrainState
from brats_seg.engine.task import Built, DataRecord, Task
from brats_seg.errors import InputError
from brats_seg.seg3d.config import Config3D, load_config
from brats_seg.seg3d.data import Dataset3D, model_meta, open_dataset, patch_dataset
from brats_seg.seg3d.validate import validate

CURVES = Curves((("val_dice_WT", "WT"), ("val_dice_TC", "TC"), ("val_dice_ET", "ET"), ("val_dice_mean", "mean")),
                ylabel="Dice", title="validation Dice")


def run_training(config: Path | None, data: Path, out: Path, fold: int | None, resume: bool,
                 overrides: Sequence[str]) -> int:
    """Entry point of `brats-seg train` for task '3d'."""
    overrides = list(overrides) + ([f"data.fold={fold}"] if fold is not None else [])
    if config is None:
        if not resume:
            raise InputError("--config", "required for a new run (e.g. --config pipelines/train/train_cpu.yaml)")
        config = Path(out) / "config.yaml"
    return train_3d(load_config(config, overrides), Path(data), Path(out), resume)


def train_3d(cfg: Config3D, data_path: Path, run_dir: Path, resume: bool) -> int:
    """Train into `run_dir` on the preprocessed dataset `data_path`; returns the exit code."""
    return train(cfg, lambda info: task_3d(cfg, open_dataset(data_path, cfg), info.device), Path(run_dir), resume)


def task_3d(cfg: Config3D, data: Dataset3D, device: torch.device | None = None) -> Task:
    """The engine's view of a 3D run on `data`, trained on `device` (None: the one train.device picks)."""
    unlabelled = [f"{len(data.unlabelled)} unlabelled case(s) not used for training"] if data.unlabelled else []
    record = DataRecord(data.manifest_path, data.sha256, data.split, identity=data.fingerprint,
                        fingerprint=data.fingerprint, notes=tuple(unlabelled))

    def validate_3d(state: TrainState, session: Session) -> dict:
        return validate(state.model, data.root, data.val, state.info, cfg.data.patch_size, cfg.validation.overlap,
                        cfg.validation.sw_batch_size, cfg.loss.mode, state.autocast)

    return Task(name="3d", cfg=cfg, data=record, build=lambda fresh: build_3d(cfg, data, device),
                dataset=lambda world_size: patch_dataset(data, cfg, world_size),
                validate=validate_3d if data.val else None, score_key="val_dice_mean",
                epoch_text=epoch_text, curves=CURVES, spatial_dims=3)


def build_3d(cfg: Config3D, data: Dataset3D, device: torch.device | None = None) -> Built:
    """The model (with model.init_from's weights when set), its loss and its metadata (which
    records the AMP dtype training on `device` autocasts to, for `predict --amp auto`)."""
    from brats_seg.models.registry import create_model
    from brats_seg.seg3d.losses import build_loss

    device = pick_device(cfg.train.device) if device is None else device
    meta = replace(model_meta(cfg, data), amp_dtype=amp_name(cfg.train.amp, device),
                   modality_dropout=cfg.augment.modality_dropout)  # > 0: `predict --missing` accepted
    try:
        model = create_model(meta.model, **meta.model_kwargs)
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError("model", str(exc).strip("'\""))
    if cfg.model.init_from:
        ckpt.load_initial_weights(model, Path(cfg.model.init_from), meta)
    loss_fn = build_loss(cfg.loss.mode, cfg.loss.dice_weight, cfg.loss.ce_weight, batch_dice=cfg.loss.batch_dice,
                         region_weights=cfg.loss.region_weights)
    return Built(model, loss_fn, meta)


def epoch_text(rec: dict, best: float) -> str:
    return (f"val WT {rec['val_dice_WT']:.3f} TC {rec['val_dice_TC']:.3f} ET {rec['val_dice_ET']:.3f}"
            f" mean {rec['val_dice_mean']:.3f} (best {best:.3f})")
