"""The 3D task's configuration: typed dataclasses loaded from YAML + overrides.

The loading machinery lives in brats_seg.core.typed_config; the optimiser, schedule, train-loop
and distributed sections (and their checks) are the engine's (brats_seg.engine.config), shared
with the 2D task. YAML keys are documented in pipelines/train/*.yaml.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from brats_seg.core.typed_config import Range, above, at_least, check_ranges, load_typed, ordered, within
from brats_seg.engine.config import (SEED_MAX, SHARED_RANGES, DistributedConfig, OptimConfig, ScheduleConfig,
                                    TrainConfig, check_loop_sections, require)


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
    region_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # WT, TC, ET terms (regions mode; mean-normalised)


@dataclass
class DataConfig:
    patch_size: tuple[int, int, int] = (128, 128, 128)
    batch_size: int = 2
    fg_fraction: float = 1.0 / 3.0
    num_workers: int = 4
    folds: int = 5
    fold: int = 0  # -1: every case trains, no validation
    outside: float = 0.5  # random patches may reach this fraction of the patch past the crop (<= 0.5)
    split_seed: int = -1  # deals the folds; -1: the run's seed (so another seed is also another split)


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
    # a smooth multiplicative field per channel (receive-coil inhomogeneity, which differs by site and
    # scanner): exp of a cubic polynomial over the patch, coefficients uniform in +-bias_field_coeff
    bias_field_prob: float = 0.0
    bias_field_coeff: float = 0.2
    # which channels (by name) get the field; "all" or e.g. [t1, t2, flair] to keep t1ce's contrast,
    # the cue that tells enhancing tumour apart, as it was acquired
    bias_field_channels: tuple[str, ...] = ("all",)
    # probability that a sample loses one or more channels (never all), zero-filled as after
    # z-scoring; a model trained with it accepts `predict --missing` (recorded in its metadata)
    modality_dropout: float = 0.0


@dataclass
class ValidationConfig:
    every_epochs: int = 10
    overlap: float = 0.5
    sw_batch_size: int = 2
    max_cases: int = 0  # 0: every validation case


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


_PROB = within(0, 1)
_FACTOR = ordered(above(0))  # a multiplicative (low, high) range
# The range of every numeric field of the 3D sections, by meaning (cross-field rules: check_config).
RANGES_3D: dict[str, Range] = {
    **SHARED_RANGES,
    "model.features": within(1, 4096), "model.dropout": within(0, 1, high_open=True),
    "loss.dice_weight": at_least(0), "loss.ce_weight": at_least(0), "loss.region_weights": at_least(0),
    "data.patch_size": within(8, 1024), "data.batch_size": within(1, 4096), "data.fg_fraction": _PROB,
    "data.num_workers": within(0, 256), "data.folds": within(2, 1000), "data.fold": at_least(-1),
    "data.outside": within(0, 0.5), "data.split_seed": within(-1, SEED_MAX),
    "augment.flip_prob": _PROB, "augment.rotate_prob": _PROB, "augment.rotate_max_deg": within(0, 180),
    "augment.scale_prob": _PROB, "augment.scale_range": _FACTOR, "augment.brightness_prob": _PROB,
    "augment.brightness_range": _FACTOR, "augment.contrast_prob": _PROB, "augment.contrast_range": _FACTOR,
    "augment.gamma_prob": _PROB, "augment.gamma_range": _FACTOR, "augment.noise_prob": _PROB,
    "augment.noise_std": at_least(0), "augment.bias_field_prob": _PROB, "augment.bias_field_coeff": within(0, 2),
    "augment.modality_dropout": within(0, 1, high_open=True),
    "validation.every_epochs": at_least(1), "validation.overlap": within(0, 1, high_open=True),
    "validation.sw_batch_size": within(1, 4096), "validation.max_cases": at_least(0),
}


def load_config(path: Path | None, overrides: Sequence[str] = ()) -> Config3D:
    """Config3D from a YAML file plus overrides, type-, range- and sanity-checked; a bad value is
    one InputError naming its key, the value, the range and the file or override it came from."""
    return load_typed(Config3D, path, overrides, check_config, ranges=RANGES_3D)


def check_config(cfg: Config3D) -> None:
    """Value ranges (RANGES_3D), then the rules that tie fields together."""
    check_ranges(cfg, RANGES_3D)
    d = cfg.data
    factor = 2 ** (len(cfg.model.features) - 1)
    bad = [s for s in d.patch_size if s % factor]
    require(not bad, "data.patch_size", f"got {list(d.patch_size)}; each size must be divisible by "
            f"{factor} for a model with {len(cfg.model.features)} levels")
    require(-1 <= d.fold < d.folds, "data.fold", f"got {d.fold}; expected -1 (no validation) or 0..{d.folds - 1}")
    loss = cfg.loss
    require(loss.dice_weight + loss.ce_weight > 0, "loss.dice_weight", f"got dice_weight {loss.dice_weight:g} and "
            f"ce_weight {loss.ce_weight:g}; expected dice_weight + ce_weight > 0")
    weights = list(loss.region_weights)
    require(sum(weights) > 0, "loss.region_weights", f"got {weights}; expected 3 weights (WT, TC, ET) >= 0 with a "
            "positive sum")
    require(loss.mode == "regions" or len(set(weights)) == 1, "loss.region_weights",
            f"got {weights} with loss.mode {loss.mode!r}; region weights apply to mode 'regions' only")
    require(cfg.augment.enabled or cfg.augment.modality_dropout == 0, "augment.modality_dropout",
            f"got {cfg.augment.modality_dropout:g} with augment.enabled false; expected augment.enabled true "
            "(dropout is an augmentation) or augment.modality_dropout 0")
    require(cfg.augment.enabled or cfg.augment.bias_field_prob == 0, "augment.bias_field_prob",
            f"got {cfg.augment.bias_field_prob:g} with augment.enabled false, where it would do nothing; expected "
            "augment.enabled true or augment.bias_field_prob 0")
    check_bias_channels(cfg.augment.bias_field_channels)
    check_loop_sections(cfg.train, cfg.optim)


def check_bias_channels(names: Sequence[str]) -> None:
    """"all" alone, or distinct channel names (matched against the data's channels by seg3d.data)."""
    shown = list(names)
    require(len(set(names)) == len(names), "augment.bias_field_channels", f"got {shown}; a channel is named twice")
    require("all" not in names or len(names) == 1, "augment.bias_field_channels",
            f"got {shown}; expected [all] alone or a list of channel names")


def split_seed(cfg: Config3D) -> int:
    """The seed that deals the folds: data.split_seed, or the run's seed when it is -1."""
    return cfg.seed if cfg.data.split_seed == -1 else cfg.data.split_seed
