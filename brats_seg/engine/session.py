"""Setting up a training session for any task: model and optimiser state, loader, logger, run files.

build_state makes a fresh, seeded TrainState from the task's model and loss; start_session
restores it from the latest checkpoint on --resume (refusing a different config or data) and
writes the run's config.yaml and run.json (rank 0).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from brats_seg.core.typed_config import to_dict
from brats_seg.engine import checkpoint as ckpt
from brats_seg.engine.config import config_hash, lr_scale, total_steps
from brats_seg.engine.distributed import DistInfo
from brats_seg.engine.loader import StreamSampler, stream_loader
from brats_seg.engine.metrics_log import MetricsLogger
from brats_seg.engine.run_info import load_run_info, new_run_info, now, write_run_info
from brats_seg.engine.runtime import StopFlag, amp_dtype, autocast_factory, configure_runtime, make_scaler, memory_format, seed_all
from brats_seg.engine.schedule import LRSchedule, build_optimizer
from brats_seg.engine.state import TrainState, restore_from
from brats_seg.engine.task import Task
from brats_seg.errors import InputError


@dataclass
class Session:
    """Per-invocation things that are not checkpointed."""

    task: Task
    loader: torch.utils.data.DataLoader
    sampler: StreamSampler
    logger: MetricsLogger
    stop: StopFlag
    run_info: dict
    total: int
    started: float = field(default_factory=time.monotonic)
    elapsed_at_start: float = 0.0
    interval: list = field(default_factory=list)
    last_loss: float = 0.0  # this rank's loss of the latest step (the stop vote checks it is finite)
    saved_step: int = -1  # step of the checkpoint last written or resumed from (a stop there saves nothing new)

    @property
    def cfg(self) -> Any:
        return self.task.cfg

    def elapsed(self) -> float:
        return self.elapsed_at_start + time.monotonic() - self.started


def check_run_dir(run_dir: Path, resume: bool) -> None:
    folder = ckpt.checkpoint_dir(run_dir)
    has_run = (folder / ckpt.LATEST).exists() or (folder / ckpt.PREVIOUS).exists()
    if has_run and not resume:
        raise InputError(run_dir, "already holds a training run (checkpoints/); pass --resume to continue "
                                  "it or choose a new --out")


def build_state(task: Task, info: DistInfo, run_dir: Path, fresh: bool = True) -> TrainState:
    """Model, optimiser, schedule, scaler and loss, freshly initialised from the seed."""
    cfg = task.cfg
    configure_runtime(cfg.train.num_threads, cfg.train.deterministic, info.device)
    seed_all(cfg.seed)
    built = task.build(fresh)
    layout = memory_format(cfg.train.memory_format, info.device, task.spatial_dims)
    model = built.model.to(info.device, memory_format=layout)
    seed_all(cfg.seed + 7919 * (info.rank + 1))  # ranks draw different dropout masks
    dtype = amp_dtype(cfg.train.amp, info.device)
    ddp = wrap_ddp(model, info)
    train_model = torch.compile(ddp or model) if cfg.train.compile else (ddp or model)
    if built.wrap is not None:
        train_model = built.wrap(train_model)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    return TrainState(model=model, train_model=train_model, optimizer=optimizer,
                      schedule=LRSchedule(optimizer, cfg.schedule, total_steps(cfg, info.world_size),
                                          lr_scale(cfg, info.world_size)),
                      scaler=make_scaler(info.device, dtype), loss_fn=built.loss_fn,
                      autocast=autocast_factory(info.device, dtype), info=info, run_dir=Path(run_dir),
                      config_hash=config_hash(cfg), data_sha256=task.data.identity, meta=built.meta,
                      ddp=ddp, memory_format=layout)


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module | None:
    """The DistributedDataParallel wrapper under torchrun, else None (weights' strides made canonical
    first: see canonical_strides)."""
    if not info.is_distributed:
        return None
    from torch.nn.parallel import DistributedDataParallel as DDP

    canonical_strides(model)
    return DDP(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def canonical_strides(model: torch.nn.Module) -> None:
    """Give every weight whose memory order is the plain contiguous one (is_contiguous()) the plain
    strides too. Channels-last 1x1x1 convolution weights (the attention gates') are such tensors
    with odd strides on their size-1 dims ([C, 1, C, C, C]); autograd gives their gradients the
    plain strides, and DDP, which lays its bucket views out like the weights, then warned "Grad
    strides do not match bucket view strides" and copied those gradients every step. The same
    memory order, so the numbers do not change."""
    with torch.no_grad():
        for param in model.parameters():
            plain, size = [], 1
            for n in reversed(param.shape):
                plain.insert(0, size)
                size *= max(n, 1)
            if param.is_contiguous() and param.stride() != tuple(plain):
                param.set_(param.clone(memory_format=torch.contiguous_format))


def restore_if_resuming(state: TrainState, task: Task, resume: bool) -> Path | None:
    """On --resume: load the latest checkpoint (same config and data only) into `state`; its path."""
    if not resume:
        return None
    payload, resumed_from = ckpt.load_latest(state.run_dir)
    ckpt.check_compatible(payload, resumed_from, state.config_hash, state.data_sha256, task.legacy_hashes)
    restore_from(state, payload)
    return resumed_from


def start_session(state: TrainState, task: Task, stop: StopFlag, resume: bool) -> Session:
    """Restore on --resume, the rank's loader, the logger, and (rank 0) config.yaml and run.json."""
    info, run_dir, data = state.info, state.run_dir, task.data
    resumed_from = restore_if_resuming(state, task, resume)
    loader, sampler = stream_loader(task.dataset(info.world_size), task.cfg, info.rank, info.device,
                                    info.world_size)
    logger = MetricsLogger(run_dir, task.curves, enabled=info.is_main)
    run_info = (load_run_info(run_dir) if resume else None) or new_run_info(
        to_dict(task.cfg), state.config_hash, data.path, data.sha256, data.split, info.world_size,
        str(info.device), state.meta.to_dict(), fingerprint=data.fingerprint)
    session = Session(task, loader, sampler, logger, stop, run_info, total_steps(task.cfg, info.world_size),
                      elapsed_at_start=state.progress.elapsed_s)
    session.saved_step = state.progress.step if resumed_from is not None else -1
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
    for note in session.task.data.notes:
        print(f"note: {note}", flush=True)
    session.run_info["status"] = "running"
    write_run_info(run_dir, session.run_info)
