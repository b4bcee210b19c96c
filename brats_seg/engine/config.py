"""The config sections every training task shares (optimiser, schedule, train loop, distributed),
their range checks, the run-control keys a resume may change, and the config hash.

A task's root dataclass (seg3d.config.Config3D, seg2d.config.Config2D) holds these sections under
the same keys, so the engine reads cfg.optim / cfg.schedule / cfg.train / cfg.distributed without
knowing the task; a task may subclass a section to change its defaults.

With N processes (torchrun), `distributed.scaling` says what train.epochs / steps_per_epoch /
max_steps count: "samples" (default) keeps one process's samples, so each rank takes
ceil(steps / N) of them and the schedule ends when the samples do; "steps" keeps one process's
steps on every rank (N x the samples). `optim.lr_scaling` multiplies the base LR by N (linear) or
sqrt(N). The plan (epoch_steps, total_steps, lr_scale) is a pure function of config + world size,
so a resume recomputes it, and the schedule refuses a checkpoint planned for another one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from brats_seg.core.typed_config import Range, above, at_least, check_ranges, to_dict, within
from brats_seg.errors import InputError


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd"] = "sgd"
    lr: float = 0.01
    weight_decay: float = 3e-5
    momentum: float = 0.99
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 12.0  # max global grad norm; 0 disables
    grad_accum: int = 1
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"  # base lr x N or x sqrt(N) with N processes


@dataclass
class ScheduleConfig:
    name: Literal["poly", "cosine", "plateau", "constant"] = "poly"
    warmup_steps: int = 0
    poly_power: float = 0.9
    min_lr: float = 0.0
    plateau_factor: float = 0.5
    plateau_patience: int = 5  # validations without improvement before the LR drops
    follow_budget: bool = True  # with train.time_budget_s: poly/cosine end when the budget does


@dataclass
class TrainConfig:
    epochs: int = 1000
    steps_per_epoch: int = 250
    max_steps: int = 0  # 0: epochs * steps_per_epoch
    time_budget_s: float = 0.0  # 0: no wall-clock limit (counts across resumes)
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    checkpoint_every_steps: int = 0  # 0: at the end of each epoch only
    log_every_steps: int = 50
    progress: bool = True
    deterministic: bool = False
    compile: bool = False
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"  # see runtime.memory_format


@dataclass
class DistributedConfig:
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    timeout_s: float = 120.0
    scaling: Literal["samples", "steps"] = "samples"  # N ranks share one process's steps, or each runs them all


# Keys that do not change what is trained; a resume may change them (config_hash skips them).
# A key a task's config lacks is simply absent from its hash.
RUN_CONTROL_KEYS = (
    "train.time_budget_s", "train.checkpoint_every_steps", "train.log_every_steps",
    "train.progress", "data.num_workers", "distributed.timeout_s", "validation.sw_batch_size",
    "validation.max_images",
    "train.memory_format",  # a layout: the same model, though not bitwise the same float rounding
)


# New keys at these values train what the configs before them trained, so config_hash leaves
# them out there: the hashes of existing runs stay valid. Any other value is hashed.
HASH_NEUTRAL_DEFAULTS: dict[str, Any] = {
    "distributed.scaling": "samples", "optim.lr_scaling": "none", "schedule.follow_budget": True,
    "augment.modality_dropout": 0.0, "augment.bias_field_prob": 0.0, "augment.bias_field_coeff": 0.2,
    "augment.bias_field_channels": ["all"], "data.split_seed": -1,
    "loss.region_weights": [1.0, 1.0, 1.0],  # the 3D task's sections
}


SEED_MAX = 2**32 - 1  # NumPy's seed range
# The range of every numeric field of the shared sections (each task adds its own sections').
SHARED_RANGES: dict[str, Range] = {
    "seed": within(0, SEED_MAX),
    "optim.lr": within(0, 1000, low_open=True), "optim.weight_decay": at_least(0),
    "optim.momentum": within(0, 1, high_open=True),
    "optim.betas": within(0, 1, high_open=True), "optim.grad_clip": at_least(0),
    "optim.grad_accum": within(1, 4096),
    "schedule.warmup_steps": at_least(0), "schedule.poly_power": at_least(0), "schedule.min_lr": at_least(0),
    "schedule.plateau_factor": within(0, 1, low_open=True), "schedule.plateau_patience": at_least(0),
    "train.epochs": at_least(1), "train.steps_per_epoch": at_least(1), "train.max_steps": at_least(0),
    "train.time_budget_s": at_least(0), "train.num_threads": within(0, 4096),
    "train.checkpoint_every_steps": at_least(0), "train.log_every_steps": at_least(1),
    "distributed.timeout_s": above(0),
}


def config_hash(cfg: Any, skip: Sequence[str] = RUN_CONTROL_KEYS) -> str:
    """sha256 of the config minus run-control keys: equal hashes train the same model."""
    from brats_seg.core.hashing import sha256_json

    data = to_dict(cfg)
    for dotted in skip:
        section, _, key = dotted.partition(".")
        data.get(section, {}).pop(key, None)
    for dotted, neutral in HASH_NEUTRAL_DEFAULTS.items():
        section, _, key = dotted.partition(".")
        if key in data.get(section, {}) and data[section][key] == neutral:
            del data[section][key]
    return sha256_json(data)


def step_share(cfg: Any, world_size: int = 1) -> int:
    """How many ranks share one process's steps: N under distributed.scaling=samples, else 1."""
    return max(1, world_size) if cfg.distributed.scaling == "samples" else 1


def epoch_steps(cfg: Any, world_size: int = 1) -> int:
    """Optimiser steps one rank takes per epoch (ceil(steps_per_epoch / share))."""
    return -(-cfg.train.steps_per_epoch // step_share(cfg, world_size))


def total_steps(cfg: Any, world_size: int = 1) -> int:
    """Optimiser steps one rank is planned for (what the LR schedule decays over): epochs x
    epoch_steps, capped by train.max_steps (counted like steps_per_epoch, so also shared)."""
    share = step_share(cfg, world_size)
    planned = cfg.train.epochs * epoch_steps(cfg, world_size)
    return min(planned, -(-cfg.train.max_steps // share)) if cfg.train.max_steps else planned


def lr_scale(cfg: Any, world_size: int = 1) -> float:
    """Multiplier on every base LR for `world_size` processes (optim.lr_scaling)."""
    n = max(1, world_size)
    return {"none": 1.0, "linear": float(n), "sqrt": math.sqrt(n)}[cfg.optim.lr_scaling]


def require(ok: bool, key: str, message: str) -> None:
    """InputError naming the config key when a value is out of range."""
    if not ok:
        raise InputError(key, message)


def check_shared(cfg: Any) -> None:
    """Ranges of the seed and the shared sections of a task's root config, then the loop rules."""
    check_ranges(cfg, SHARED_RANGES)
    check_loop_sections(cfg.train, cfg.optim)


def check_loop_sections(t: TrainConfig, o: OptimConfig) -> None:
    """Value ranges of the shared train-loop and optimiser sections that the types cannot express."""
    require(t.epochs >= 1 and t.steps_per_epoch >= 1, "train.epochs", "epochs and steps_per_epoch must be >= 1")
    require(t.max_steps >= 0 and t.time_budget_s >= 0, "train.max_steps", "limits must be >= 0 (0 = none)")
    require(t.log_every_steps >= 1, "train.log_every_steps", f"got {t.log_every_steps}; expected >= 1")
    require(o.lr > 0, "optim.lr", f"got {o.lr}; expected > 0")
    require(o.grad_accum >= 1, "optim.grad_accum", f"got {o.grad_accum}; expected >= 1")
    require(o.grad_clip >= 0, "optim.grad_clip", f"got {o.grad_clip}; expected >= 0 (0 disables)")
