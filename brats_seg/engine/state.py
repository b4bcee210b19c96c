"""Everything a training run carries from step to step, and its checkpoint round trip.

`checkpoint_payload` / `restore_from` are the only places that know which pieces make a run
resumable: model, optimiser, schedule, scaler, progress counters, best metric, and the RNG
states of every rank (gathered to rank 0, which writes). The data stream needs no saved state:
it is a pure function of (seed, epoch, rank, index), so progress.epoch_step positions it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch

from brats_seg.engine.checkpoint import capture_rng, restore_rng, warn
from brats_seg.engine.distributed import DistInfo, gather_objects
from brats_seg.engine.model_meta import ModelMeta
from brats_seg.engine.schedule import LRSchedule


@dataclass
class Progress:
    """Counters that must survive a resume."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # current (0-based) epoch
    epoch_step: int = 0  # optimiser steps done within the current epoch
    elapsed_s: float = 0.0  # training wall-clock over all sessions (the budget counts this)
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0
    skipped_steps: int = 0  # non-finite gradients
    best_metric: float = -math.inf
    best_epoch: int = -1
    best_step: int = -1
    last_val_step: int = -1

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Progress":
        return cls(**{k: state[k] for k in asdict(cls()) if k in state})


@dataclass(kw_only=True)
class TrainState:
    """Keyword-only: several fields share a type (run_dir/config_hash/data_sha256) and must not swap."""

    model: torch.nn.Module  # the plain module (saving, validation)
    train_model: torch.nn.Module  # what the step calls: DDP and/or compiled wrapper of `model`
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: Any  # torch.amp.GradScaler (disabled unless fp16)
    loss_fn: torch.nn.Module
    autocast: Callable[[], ContextManager]
    info: DistInfo
    run_dir: Path
    config_hash: str
    data_sha256: str  # identity of the training data (Task.data.identity); a resume must match it
    meta: ModelMeta
    progress: Progress = field(default_factory=Progress)
    ddp: torch.nn.Module | None = None  # the DistributedDataParallel wrapper, for no_sync()
    memory_format: torch.memory_format = torch.preserve_format  # of the weights; inputs follow it


def checkpoint_payload(state: TrainState, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict (collective: every rank must call it; RNG states are gathered)."""
    rngs = gather_objects(capture_rng(), state.info)
    return {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "schedule": state.schedule.state_dict(),
        "scaler": state.scaler.state_dict(),
        "progress": state.progress.state_dict(),
        "rng": rngs,
        "world_size": state.info.world_size,
        "config_hash": state.config_hash,
        "data_sha256": state.data_sha256,
        "meta": state.meta.to_dict(),
        **(extra or {}),
    }


def restore_from(state: TrainState, payload: dict[str, Any]) -> None:
    """Put a run back exactly where the checkpoint left it (this rank's RNG included)."""
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.schedule.load_state_dict(payload["schedule"])
    if payload["scaler"]:
        state.scaler.load_state_dict(payload["scaler"])
    state.progress = Progress.from_state(payload["progress"])
    rngs = payload["rng"]
    if payload.get("world_size") != state.info.world_size:
        warn(f"checkpoint was written by {payload.get('world_size')} process(es), resuming with "
             f"{state.info.world_size}: training continues but is not bitwise identical to an uninterrupted run")
    restore_rng(rngs[state.info.rank] if state.info.rank < len(rngs) else rngs[0])
