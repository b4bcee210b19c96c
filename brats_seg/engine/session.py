"""Setting up a 3D training session: model and optimiser state, loaders, logger, run files.

build_state makes a fresh, seeded TrainState; start_session restores it from the latest
checkpoint on --resume (refusing a different config or data manifest) and writes the run's
config.yaml and run.json (rank 0).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from brats_seg.errors import InputError
from brats_seg.engine import checkpoint as ckpt
from brats_seg.seg3d.config import Config3D, config_hash, to_dict, total_steps
from brats_seg.seg3d.data import Dataset3D, build_loader, model_meta
from brats_seg.engine.distributed import DistInfo
from brats_seg.engine.metrics_log import MetricsLogger
from brats_seg.engine.run_info import load_run_info, new_run_info, now, write_run_info
from brats_seg.engine.runtime import StopFlag, amp_dtype, autocast_factory, configure_runtime, make_scaler, memory_format, seed_all
from brats_seg.engine.schedule import LRSchedule, build_optimizer
from brats_seg.engine.state import TrainState, restore_from


@dataclass
class Session:
    """Per-invocation things that are not checkpointed."""

    cfg: Config3D
    data: Dataset3D
    loader: torch.utils.data.DataLoader
    sampler: object
    logger: MetricsLogger
    stop: StopFlag
    run_info: dict
    total: int
    started: float = field(default_factory=time.monotonic)
    elapsed_at_start: float = 0.0
    interval: list = field(default_factory=list)

    def elapsed(self) -> float:
        return self.elapsed_at_start + time.monotonic() - self.started


def check_run_dir(run_dir: Path, resume: bool) -> None:
    folder = ckpt.checkpoint_dir(run_dir)
    has_run = (folder / ckpt.LATEST).exists() or (folder / ckpt.PREVIOUS).exists()
    if has_run and not resume:
        raise InputError(run_dir, "already holds a training run (checkpoints/); pass --resume to continue "
                                  "it or choose a new --out")


def build_state(cfg: Config3D, data: Dataset3D, info: DistInfo, run_dir: Path) -> TrainState:
    """Model, optimiser, schedule, scaler and loss, freshly initialised from the seed."""
    from brats_seg.seg3d.losses import build_loss
    from brats_seg.models.registry import create_model

    configure_runtime(cfg.train.num_threads, cfg.train.deterministic, info.device)
    seed_all(cfg.seed)
    meta = model_meta(cfg, data)
    try:
        model = create_model(meta["model"], **meta["model_kwargs"])
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError("model", str(exc).strip("'\""))
    if cfg.model.init_from:
        ckpt.load_initial_weights(model, Path(cfg.model.init_from), meta)
    layout = memory_format(cfg.train.memory_format, info.device)
    model = model.to(info.device, memory_format=layout)
    seed_all(cfg.seed + 7919 * (info.rank + 1))  # ranks draw different dropout masks
    dtype = amp_dtype(cfg.train.amp, info.device)
    ddp = _wrap_ddp(model, info)
    train_model = torch.compile(ddp or model) if cfg.train.compile else (ddp or model)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    loss_fn = build_loss(cfg.loss.mode, cfg.loss.dice_weight, cfg.loss.ce_weight, batch_dice=cfg.loss.batch_dice)
    return TrainState(model, train_model, optimizer, LRSchedule(optimizer, cfg.schedule, total_steps(cfg.train)),
                      make_scaler(info.device, dtype), loss_fn, autocast_factory(info.device, dtype), info,
                      Path(run_dir), config_hash(cfg), data.fingerprint, meta, ddp=ddp, memory_format=layout)


def _wrap_ddp(model: torch.nn.Module, info: DistInfo):
    if not info.is_distributed:
        return None
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def restore_if_resuming(state: TrainState, resume: bool) -> Path | None:
    """On --resume: load the latest checkpoint (same config and data only) into `state`; its path."""
    if not resume:
        return None
    payload, resumed_from = ckpt.load_latest(state.run_dir)
    ckpt.check_compatible(payload, resumed_from, state.config_hash, state.data_sha256)
    restore_from(state, payload)
    return resumed_from


def start_session(state: TrainState, cfg: Config3D, data: Dataset3D, stop: StopFlag, resume: bool) -> Session:
    info, run_dir = state.info, state.run_dir
    resumed_from = restore_if_resuming(state, resume)
    loader, sampler = build_loader(data, cfg, info.rank, info.world_size, info.device)
    logger = MetricsLogger(run_dir, enabled=info.is_main)
    run_info = (load_run_info(run_dir) if resume else None) or new_run_info(
        to_dict(cfg), state.config_hash, data.manifest_path, data.sha256, data.split, info.world_size,
        str(info.device), state.meta, fingerprint=data.fingerprint)
    session = Session(cfg, data, loader, sampler, logger, stop, run_info, total_steps(cfg.train),
                      elapsed_at_start=state.progress.elapsed_s)
    if info.is_main:
        _write_start_files(state, session, resumed_from)
    return session


def _write_start_files(state: TrainState, session: Session, resumed_from: Path | None) -> None:
    import yaml

    from brats_seg.core.atomic import atomic_write_text

    run_dir, p = state.run_dir, state.progress
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(session.cfg), sort_keys=False))
    if resumed_from is not None:
        session.logger.resume_at(p.step)
        session.run_info["resumed"].append({"at": now(), "step": p.step, "epoch": p.epoch,
                                            "checkpoint": str(resumed_from)})
        print(f"resumed from {resumed_from} at step {p.step} (epoch {p.epoch})", flush=True)
    if session.data.unlabelled:
        print(f"note: {len(session.data.unlabelled)} unlabelled case(s) not used for training", flush=True)
    session.run_info["status"] = "running"
    write_run_info(run_dir, session.run_info)


