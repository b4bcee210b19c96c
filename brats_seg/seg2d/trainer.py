"""The 2D task (task '2d' of `brats-seg train`, and `brats-seg distill`).

What is 2D here: the datasets and sample stream (seg2d.build), the loss (seg2d.losses), mIoU
validation (seg2d.evaluate) and the optional frozen teacher for distillation. The loop,
checkpoints, resume, DDP, time budget and run files are the engine's (brats_seg.engine.loop),
so both tasks checkpoint, resume and stop identically.

Exit codes as for 3D: 0 done, 2 bad input, 75 stopped by SIGTERM after a checkpoint.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from brats_seg.engine.distributed import DistInfo
from brats_seg.engine.loop import train
from brats_seg.engine.metrics_log import Curves
from brats_seg.engine.runtime import amp_name
from brats_seg.engine.session import Session
from brats_seg.engine.state import TrainState
from brats_seg.engine.task import Built, DataRecord, Task
from brats_seg.errors import InputError
from brats_seg.seg2d.build import Data2D, TrainStream, build_model_2d, model_meta_2d, open_data_2d
from brats_seg.seg2d.config import Config2D, legacy_config_hash, load_config_2d, resolve_data_arg
from brats_seg.seg2d.evaluate import evaluate_dataset, load_model_2d
from brats_seg.seg2d.losses import DistillWrapper, Seg2DLoss

CURVES = Curves((("val_miou", "mIoU"), ("val_pixel_accuracy", "pixel accuracy")), ylabel="score", title="validation")


def load_run_config(config: Path | None, data: Path, out: Path, resume: bool,
                    overrides: Sequence[str]) -> tuple[Config2D, Path]:
    """(config, dataset root): --config (RUN_DIR/config.yaml on --resume) + the --data YAML's keys + overrides."""
    if config is None:
        if not resume:
            raise InputError("--config", "required for a new run (e.g. --config pipelines/train/voc_deeplabv3plus.yaml)")
        config = Path(out) / "config.yaml"
    root, data_overrides = resolve_data_arg(Path(data))
    return load_config_2d(config, [*data_overrides, *overrides]), root


def run_training(config: Path | None, data: Path, out: Path, fold: int | None, resume: bool,
                 overrides: Sequence[str]) -> int:
    """Entry point of `brats-seg train` for task '2d'."""
    overrides = list(overrides)
    if fold is not None:
        if fold != -1:
            raise InputError("--fold", "2D datasets have fixed splits (data.train_split / data.val_split); "
                                       "only --fold -1 (train without validation) applies")
        overrides.append("validation.every_epochs=0")
    cfg, root = load_run_config(config, data, out, resume, overrides)
    return train_2d(cfg, root, Path(out), resume)


def train_2d(cfg: Config2D, root: Path, run_dir: Path, resume: bool) -> int:
    """Train (or distill, when cfg.distill.teacher is set) into `run_dir`; returns the exit code."""
    return train(cfg, lambda info: task_2d(cfg, open_data_2d(Path(root), cfg), info), Path(run_dir), resume)


def task_2d(cfg: Config2D, data: Data2D, info: DistInfo) -> Task:
    """The engine's view of a 2D run on `data` (the teacher, if any, is loaded onto info.device now)."""
    teacher = load_teacher(cfg.distill.teacher, data, info.device) if cfg.distill.teacher else None
    record = DataRecord(data.root, data.sha256, data.split, identity=data.sha256)

    def validate_2d(state: TrainState, session: Session) -> dict:
        meta = state.meta
        result, _ = evaluate_dataset(state.model, data.val, meta.num_classes, meta.ignore_index,
                                     eval_scale=cfg.data.eval_scale, max_images=cfg.validation.max_images,
                                     autocast=state.autocast, info=state.info)
        return {"val_miou": result["miou"], "val_pixel_accuracy": result["pixel_accuracy"],
                "val_mean_class_accuracy": result["mean_class_accuracy"],
                "val_iou_per_class": dict(zip(meta.class_names, result["iou_per_class"]))}

    return Task(name="2d", cfg=cfg, data=record, build=lambda fresh: build_2d(cfg, data, teacher, fresh, info.device),
                dataset=lambda world_size: TrainStream(data.train, cfg.seed, world_size),
                validate=validate_2d if data.val is not None else None, score_key="val_miou",
                epoch_text=epoch_text, curves=CURVES, spatial_dims=2, legacy_hashes=(legacy_config_hash(cfg),))


def load_teacher(path: str, data: Data2D, device: torch.device) -> torch.nn.Module:
    """The frozen teacher (a 2D run dir or checkpoint) for the student's classes."""
    teacher, meta = load_model_2d(Path(path), device)
    if meta["num_classes"] != data.train.num_classes:
        raise InputError(path, f"teacher predicts {meta['num_classes']} classes, the dataset has "
                               f"{data.train.num_classes}; distil on the teacher's label set")
    return teacher


def build_2d(cfg: Config2D, data: Data2D, teacher: torch.nn.Module | None, fresh: bool,
             device: torch.device = torch.device("cpu")) -> Built:
    """The student (ImageNet backbone weights on a fresh run only), its loss, its metadata (with
    the AMP dtype training on `device` autocasts to), and the teacher beside it when distilling."""
    meta = replace(model_meta_2d(cfg, data), amp_dtype=amp_name(cfg.train.amp, device))
    model = build_model_2d(cfg.model, meta, load_pretrained=fresh)
    lc = cfg.loss
    loss_fn = Seg2DLoss(lc.ce_weight, lc.dice_weight, lc.aux_weight, meta.ignore_index,
                        cfg.distill.temperature, cfg.distill.alpha)
    wrap = (lambda train_model: DistillWrapper(train_model, teacher)) if teacher is not None else None
    return Built(model, loss_fn, meta, wrap)


def epoch_text(rec: dict, best: float) -> str:
    return f"val mIoU {rec['val_miou']:.3f} pixel acc {rec['val_pixel_accuracy']:.3f} (best {best:.3f})"
