"""Training configuration: typed dataclasses for the 3D trainer, loaded from YAML + overrides.

The loading machinery lives in brats_seg.core.typed_config and takes any dataclass, so the 2D trainer
reuses it with its own root dataclass and the shared sections here (OptimConfig, ScheduleConfig,
TrainConfig, ValidationConfig, DistributedConfig). YAML keys are documented in pipelines/*.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from brats_seg.errors import InputError
from brats_seg.core.typed_config import apply_overrides, build_typed, load_yaml_mapping, parse_override, to_dict


@dataclass
class ModelConfig:
    name: str = "attention_unet3d"
    features: tuple[int, ...] = (32, 64, 128, 256, 320)
    norm: Literal["instance", "batch", "group", "none"] = "instance"
    deep_supervision: bool = True
    dropout: float = 0.0
    upsample: Literal["transpose", "trilinear"] = "transpose"
    init_from: str = ""  # a run dir or checkpoint whose weights start this run (fine-tuning)


@dataclass
class LossConfig:
    mode: Literal["regions", "labels"] = "regions"
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    batch_dice: bool = True


@dataclass
class DataConfig:
    patch_size: tuple[int, int, int] = (128, 128, 128)
    batch_size: int = 2
    fg_fraction: float = 1.0 / 3.0
    num_workers: int = 4
    folds: int = 5
    fold: int = 0  # -1: every case trains, no validation
    outside: float = 0.5  # random patches may reach this fraction of the patch past the crop (<= 0.5)


@dataclass
class AugmentConfig:
    enabled: bool = True
    flip_prob: float = 0.5
    rotate_prob: float = 0.2
    rotate_max_deg: float = 30.0
    scale_prob: float = 0.2
    scale_range: tuple[float, float] = (0.7, 1.4)
    brightness_prob: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    contrast_prob: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    gamma_prob: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_prob: float = 0.1
    noise_std: float = 0.1


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


@dataclass
class ScheduleConfig:
    name: Literal["poly", "cosine", "plateau", "constant"] = "poly"
    warmup_steps: int = 0
    poly_power: float = 0.9
    min_lr: float = 0.0
    plateau_factor: float = 0.5
    plateau_patience: int = 5  # validations without improvement before the LR drops


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
class ValidationConfig:
    every_epochs: int = 10
    overlap: float = 0.5
    sw_batch_size: int = 2
    max_cases: int = 0  # 0: every validation case


@dataclass
class DistributedConfig:
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    timeout_s: float = 120.0


@dataclass
class Config3D:
    task: Literal["3d"] = "3d"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


# Keys that do not change what is trained; a resume may change them (config_hash skips them).
RUN_CONTROL_KEYS = (
    "train.time_budget_s", "train.checkpoint_every_steps", "train.log_every_steps",
    "train.progress", "data.num_workers", "distributed.timeout_s", "validation.sw_batch_size",
    "train.memory_format",  # a layout: the same model, though not bitwise the same float rounding
)


def config_hash(cfg: Any, skip: Sequence[str] = RUN_CONTROL_KEYS) -> str:
    """sha256 of the config minus run-control keys: equal hashes train the same model."""
    from brats_seg.core.hashing import sha256_json

    data = to_dict(cfg)
    for dotted in skip:
        section, _, key = dotted.partition(".")
        data.get(section, {}).pop(key, None)
    return sha256_json(data)


# ---- the 3D config -----------------------------------------------------------------------------

def load_config(path: Path | None, overrides: Sequence[str] = ()) -> Config3D:
    """Config3D from a YAML file plus overrides, type-checked and sanity-checked."""
    mapping = apply_overrides(load_yaml_mapping(path), overrides)
    cfg = build_typed(Config3D, mapping)
    check_config(cfg)
    return cfg


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise InputError(key, message)


def check_config(cfg: Config3D) -> None:
    """Value ranges the types cannot express."""
    d, t, o = cfg.data, cfg.train, cfg.optim
    _require(min(d.patch_size) >= 8, "data.patch_size", f"got {list(d.patch_size)}; expected sizes >= 8")
    factor = 2 ** (len(cfg.model.features) - 1)
    bad = [s for s in d.patch_size if s % factor]
    _require(not bad, "data.patch_size", f"got {list(d.patch_size)}; each size must be divisible by "
             f"{factor} for a model with {len(cfg.model.features)} levels")
    _require(d.batch_size >= 1, "data.batch_size", f"got {d.batch_size}; expected >= 1")
    _require(0.0 <= d.fg_fraction <= 1.0, "data.fg_fraction", f"got {d.fg_fraction}; expected 0..1")
    _require(0.0 <= d.outside <= 0.5, "data.outside", f"got {d.outside}; expected 0..0.5")
    _require(d.num_workers >= 0, "data.num_workers", f"got {d.num_workers}; expected >= 0")
    _require(d.folds >= 2, "data.folds", f"got {d.folds}; expected >= 2")
    _require(-1 <= d.fold < d.folds, "data.fold", f"got {d.fold}; expected -1 (no validation) or 0..{d.folds - 1}")
    _require(t.epochs >= 1 and t.steps_per_epoch >= 1, "train.epochs",
             "epochs and steps_per_epoch must be >= 1")
    _require(t.max_steps >= 0 and t.time_budget_s >= 0, "train.max_steps", "limits must be >= 0 (0 = none)")
    _require(t.log_every_steps >= 1, "train.log_every_steps", f"got {t.log_every_steps}; expected >= 1")
    _require(o.lr > 0, "optim.lr", f"got {o.lr}; expected > 0")
    _require(o.grad_accum >= 1, "optim.grad_accum", f"got {o.grad_accum}; expected >= 1")
    _require(o.grad_clip >= 0, "optim.grad_clip", f"got {o.grad_clip}; expected >= 0 (0 disables)")
    _require(cfg.validation.every_epochs >= 1, "validation.every_epochs", "expected >= 1")
    _require(0 <= cfg.validation.overlap < 1, "validation.overlap", "expected 0 <= overlap < 1")
    _require(cfg.distributed.timeout_s > 0, "distributed.timeout_s", "expected > 0 seconds")
    lo, hi = cfg.augment.scale_range
    _require(0 < lo <= hi, "augment.scale_range", f"got {[lo, hi]}; expected 0 < low <= high")


def total_steps(t: TrainConfig) -> int:
    """Optimiser steps the run is planned for (what the LR schedule decays over)."""
    planned = t.epochs * t.steps_per_epoch
    return min(planned, t.max_steps) if t.max_steps else planned
