"""The 2D trainer (task '2d' of `brats-seg train`, and `brats-seg distill`).

Built from the 3D trainer's pieces: TrainState and its checkpoint round trip (train.state,
train.checkpoint: atomic, weights_only, latest/previous/best, RNG states), optimisers and LR
schedules (train.schedule), AMP and seeding (train.runtime), torchrun support
(train.distributed), metrics files (train.logging), run.json (train.run_info), the Session and
run-dir checks (train.setup3d) and the step/save/stop logic (train.loop, via twod.loop).
What is 2D here: the datasets and sample stream (twod.setup), the loss (twod.losses), mIoU
validation (twod.loop) and the optional frozen teacher for distillation.

Exit codes as for 3D: 0 done, 2 bad input, 75 stopped by SIGTERM after a checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from brats_seg.errors import InputError
from brats_seg.seg3d.config import config_hash, total_steps
from brats_seg.engine.distributed import DistInfo, init_distributed, shutdown
from brats_seg.engine.loop import _finish
from brats_seg.engine.run_info import load_run_info, new_run_info
from brats_seg.engine.runtime import EXIT_OK, EXIT_PREEMPTED, StopFlag, amp_dtype, autocast_factory, configure_runtime, make_scaler, seed_all
from brats_seg.engine.schedule import LRSchedule, build_optimizer
from brats_seg.engine.session import Session, _wrap_ddp, _write_start_files, check_run_dir, restore_if_resuming
from brats_seg.engine.state import TrainState
from brats_seg.core.typed_config import to_dict
from brats_seg.seg2d.config import RUN_CONTROL_KEYS_2D, Config2D, load_config_2d, resolve_data_arg
from brats_seg.seg2d.epoch import MetricsLogger2D, run_epochs
from brats_seg.seg2d.losses import DistillWrapper, Seg2DLoss
from brats_seg.seg2d.build import Data2D, build_loader_2d, build_model_2d, model_meta_2d, open_data_2d


def load_run_config(config: Path | None, data: Path, out: Path, resume: bool,
                    overrides: Sequence[str]) -> tuple[Config2D, Path]:
    """(config, dataset root): --config (RUN_DIR/config.yaml on --resume) + the --data YAML's keys + overrides."""
    if config is None:
        if not resume:
            raise InputError("--config", "required for a new run (e.g. --config pipelines/voc_deeplabv3plus.yaml)")
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
    info = init_distributed(cfg.train.device, cfg.distributed.backend, cfg.distributed.timeout_s)
    stop = StopFlag().install()
    try:
        data = open_data_2d(Path(root), cfg)
        check_run_dir(run_dir, resume)
        teacher = load_teacher(cfg.distill.teacher, data, info.device) if cfg.distill.teacher else None
        state = build_state_2d(cfg, data, info, run_dir, teacher, fresh=not resume)
        session = start_session_2d(state, cfg, data, stop, resume)
        status = run_epochs(state, session)
        _finish(state, session, status)
        return EXIT_PREEMPTED if status == "preempted" else EXIT_OK
    finally:
        stop.restore()
        shutdown(info)


def load_teacher(path: str, data: Data2D, device: torch.device) -> torch.nn.Module:
    """The frozen teacher (a 2D run dir or checkpoint) for the student's classes."""
    from brats_seg.seg2d.evaluate import load_model_2d

    teacher, meta = load_model_2d(Path(path), device)
    if meta["num_classes"] != data.train.num_classes:
        raise InputError(path, f"teacher predicts {meta['num_classes']} classes, the dataset has "
                               f"{data.train.num_classes}; distil on the teacher's label set")
    return teacher


def build_state_2d(cfg: Config2D, data: Data2D, info: DistInfo, run_dir: Path,
                   teacher: torch.nn.Module | None = None, fresh: bool = True) -> TrainState:
    """Model, optimiser, schedule, scaler and loss, freshly initialised from the seed."""
    configure_runtime(cfg.train.num_threads, cfg.train.deterministic, info.device)
    seed_all(cfg.seed)
    meta = model_meta_2d(cfg, data)
    if teacher is not None:
        meta["distilled_from"] = str(Path(cfg.distill.teacher).resolve())
    model = build_model_2d(cfg.model, meta, load_pretrained=fresh).to(info.device)
    seed_all(cfg.seed + 7919 * (info.rank + 1))  # ranks draw different dropout masks
    dtype = amp_dtype(cfg.train.amp, info.device)
    ddp = _wrap_ddp(model, info)
    train_model = torch.compile(ddp or model) if cfg.train.compile else (ddp or model)
    if teacher is not None:
        train_model = DistillWrapper(train_model, teacher)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    lc = cfg.loss
    loss_fn = Seg2DLoss(lc.ce_weight, lc.dice_weight, lc.aux_weight, meta["ignore_index"],
                        cfg.distill.temperature, cfg.distill.alpha)
    return TrainState(model, train_model, optimizer, LRSchedule(optimizer, cfg.schedule, total_steps(cfg.train)),
                      make_scaler(info.device, dtype), loss_fn, autocast_factory(info.device, dtype), info,
                      Path(run_dir), config_hash(cfg, RUN_CONTROL_KEYS_2D), data.sha256, meta, ddp=ddp)


def start_session_2d(state: TrainState, cfg: Config2D, data: Data2D, stop: StopFlag, resume: bool) -> Session:
    """Restore on --resume (same config and data only), loaders, logger, config.yaml and run.json."""
    info, run_dir = state.info, state.run_dir
    resumed_from = restore_if_resuming(state, resume)
    loader, sampler = build_loader_2d(data, cfg, info.rank, info.world_size, info.device)
    logger = MetricsLogger2D(run_dir, enabled=info.is_main)
    run_info = (load_run_info(run_dir) if resume else None) or new_run_info(
        to_dict(cfg), state.config_hash, data.root, data.sha256, data.split, info.world_size,
        str(info.device), state.meta)
    session = Session(cfg, data, loader, sampler, logger, stop, run_info, total_steps(cfg.train),
                      elapsed_at_start=state.progress.elapsed_s)
    if info.is_main:
        _write_start_files(state, session, resumed_from)
    return session

