"""2D training configuration: its own root dataclass, loaded by the typed machinery of core.typed_config.

The optimiser, schedule, train-loop and distributed sections are the engine's shared dataclasses
(brats_seg.engine.config), so the two tasks share their keys, their checks and the run-control
keys of the config hash; only the model, data, augmentation, loss, validation and distillation
sections are 2D-specific.
Keys are documented in pipelines/train/voc_deeplabv3plus.yaml.

Splits: `data.train_split` / `data.val_split` name a VOC ImageSets list, a CamVid folder
(`<split>` + `<split>annot`), an ADE20K `images/<split>` folder, or a subfolder of the root for
the split-less formats (folder, voc_colour); "" means the whole root. Validation is switched off
with `validation.every_epochs: 0` (or `--fold -1`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from brats_seg.errors import InputError
from brats_seg.core.typed_config import (Range, above, at_least, check_ranges, load_typed, load_yaml_mapping, ordered,
                                        within)
from brats_seg.engine.config import (RUN_CONTROL_KEYS, SHARED_RANGES, DistributedConfig, OptimConfig, ScheduleConfig,
                                    TrainConfig, check_loop_sections, config_hash, require)

Backbone = Literal["vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2"]
CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
                  "pedestrian", "bicyclist", "unlabelled")


@dataclass
class Model2DConfig:
    name: Literal["deeplabv3plus", "fcn32s", "fcn16s", "fcn8s"] = "deeplabv3plus"
    backbone: Backbone = "resnet50"
    output_stride: int = 16  # deeplabv3plus: 8 or 16; FCN: 8/16/32 (VGG: 32 only)
    aux: bool = False  # auxiliary FCN head on the stride-16 features (ResNet/MobileNetV2)
    width_mult: float = 1.0  # mobilenet_v2 only
    aspp_channels: int = 256  # deeplabv3plus only
    dropout: float = 0.5  # deeplabv3plus ASPP dropout / VGG fc dropout
    fc_channels: int = 4096  # FCN-VGG fc6/fc7 width
    pretrained_backbone: str = ""  # torchvision ImageNet .pth file for the backbone ("" = from scratch)


@dataclass
class Data2DConfig:
    format: Literal["voc", "voc_colour", "camvid", "ade20k", "folder"] = "voc"
    train_split: str = "train"
    val_split: str = "val"
    num_classes: int = 0  # folder format only (the others know theirs)
    ignore_index: int = 255  # folder format only
    image_dir: str = "images"  # folder format
    mask_dir: str = "masks"  # folder format
    image_tag: str = ""  # folder / voc_colour: stem ending of images ("_image")
    mask_tag: str = ""  # folder / voc_colour: stem ending of masks ("_target")
    ignore_unlabelled: bool = True  # camvid: class 11 is ignored
    reduce_zero_label: bool = True  # ade20k: 0 ("other") is ignored, 1..150 -> 0..149
    strict_colours: bool = False  # voc_colour: unknown colours are errors instead of ignored
    crop_size: tuple[int, int] = (512, 512)  # training crop (H, W)
    batch_size: int = 8
    num_workers: int = 2
    eval_scale: float = 1.0  # validation/evaluation resize factor; logits go back to full size


@dataclass
class Augment2DConfig:
    enabled: bool = True  # False: normalise + pad/crop + flip only
    scale_range: tuple[float, float] = (0.5, 2.0)
    rotate_degrees: float = 10.0
    jitter: float = 0.3  # brightness/contrast/saturation, image only


@dataclass
class Loss2DConfig:
    ce_weight: float = 1.0
    dice_weight: float = 0.0  # soft multi-class Dice over non-ignored pixels
    aux_weight: float = 0.4  # cross-entropy on the auxiliary head (model.aux: true)


@dataclass
class Validation2DConfig:
    every_epochs: int = 1  # 0: never validate (best.pt then never exists; latest.pt serves)
    max_images: int = 0  # 0: the whole validation split


@dataclass
class Distill2DConfig:
    teacher: str = ""  # run dir or checkpoint of the teacher (brats-seg distill --teacher sets it)
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the soft (KL) term; 1 - alpha weighs the label cross-entropy


@dataclass
class Optim2DConfig(OptimConfig):
    """The shared optimiser section with the usual segmentation SGD defaults (momentum 0.9, weight
    decay 1e-4, no clipping). A subclass, not a default_factory: the typed loader builds a section
    that appears in the YAML from its class, so only class defaults apply to a partial section."""

    lr: float = 0.01
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    grad_clip: float = 0.0


@dataclass
class Train2DConfig(TrainConfig):
    """The shared train-loop section with 2D-sized defaults."""

    epochs: int = 50
    steps_per_epoch: int = 100
    log_every_steps: int = 10


@dataclass
class Config2D:
    task: Literal["2d"] = "2d"
    seed: int = 0
    model: Model2DConfig = field(default_factory=Model2DConfig)
    data: Data2DConfig = field(default_factory=Data2DConfig)
    augment: Augment2DConfig = field(default_factory=Augment2DConfig)
    loss: Loss2DConfig = field(default_factory=Loss2DConfig)
    optim: Optim2DConfig = field(default_factory=Optim2DConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: Train2DConfig = field(default_factory=Train2DConfig)
    validation: Validation2DConfig = field(default_factory=Validation2DConfig)
    distill: Distill2DConfig = field(default_factory=Distill2DConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


def legacy_config_hash(cfg: Config2D) -> str:
    """The hash 2D checkpoints were written with before train.memory_format became a run-control
    key for 2D too (it was hashed then): a resume of such a run is accepted under it."""
    return config_hash(cfg, tuple(k for k in RUN_CONTROL_KEYS if k != "train.memory_format"))


# The range of every numeric field of the 2D sections, by meaning (cross-field rules: _check_*).
RANGES_2D: dict[str, Range] = {
    **SHARED_RANGES,
    "model.output_stride": within(8, 32), "model.width_mult": within(0, 16, low_open=True),
    "model.aspp_channels": within(1, 65536), "model.dropout": within(0, 1, high_open=True),
    "model.fc_channels": within(1, 65536),
    "data.num_classes": within(0, 65535), "data.ignore_index": within(0, 65535),
    "data.crop_size": within(16, 16384), "data.batch_size": within(1, 4096), "data.num_workers": within(0, 256),
    "data.eval_scale": within(0, 16, low_open=True),
    "augment.scale_range": ordered(above(0)), "augment.rotate_degrees": within(0, 180),
    "augment.jitter": within(0, 1, high_open=True),
    "loss.ce_weight": at_least(0), "loss.dice_weight": at_least(0), "loss.aux_weight": at_least(0),
    "validation.every_epochs": at_least(0), "validation.max_images": at_least(0),
    "distill.temperature": within(0, 1000, low_open=True), "distill.alpha": within(0, 1),
}


def load_config_2d(path: Path | None, overrides: Sequence[str] = ()) -> Config2D:
    """Config2D from a YAML file plus `key=value` overrides, type- and range-checked; a bad value is
    one InputError naming its key, the value, the range and the file or override it came from."""
    return load_typed(Config2D, path, overrides, check_config_2d, defaults={"task": "2d"}, ranges=RANGES_2D)


def uses_batchnorm(model: Model2DConfig) -> bool:
    """Every 2D model but FCN-VGG16 has BatchNorm (and so needs batches of two or more)."""
    return not (model.name.startswith("fcn") and model.backbone == "vgg16")


def _check_model(m: Model2DConfig) -> None:
    if m.name == "deeplabv3plus":
        require(m.backbone != "vgg16", "model.backbone", "deeplabv3plus needs a ResNet or mobilenet_v2 backbone")
        require(m.output_stride in (8, 16), "model.output_stride", f"got {m.output_stride}; deeplabv3plus "
                                                                    "supports 8 or 16")
    elif m.backbone == "vgg16":
        require(m.output_stride == 32, "model.output_stride", f"got {m.output_stride}; FCN-VGG16 has stride 32 only")
        require(not m.aux, "model.aux", "the VGG16 FCN has no auxiliary head; use a ResNet backbone")
    else:
        require(m.output_stride in (8, 16, 32), "model.output_stride", f"got {m.output_stride}; expected 8, 16 or 32")


def _check_data(cfg: Config2D) -> None:
    d = cfg.data
    if d.format == "folder":
        require(d.num_classes >= 2, "data.num_classes", f"got {d.num_classes}; the folder format needs the "
                                                         "number of classes (>= 2)")
        require(not 0 <= d.ignore_index < d.num_classes, "data.ignore_index",
                 f"got {d.ignore_index}; it must not be a class index (0..{d.num_classes - 1}); 255 is usual")
    require(min(d.crop_size) >= 16, "data.crop_size", f"got {list(d.crop_size)}; expected sizes >= 16")
    least = 2 if uses_batchnorm(cfg.model) else 1
    require(d.batch_size >= least, "data.batch_size", f"got {d.batch_size}; BatchNorm needs batches of at "
                                                       f"least 2 images (the ASPP pooling branch sees one value "
                                                       f"per image)" if least == 2 else "expected >= 1")
    require(d.format != "camvid" or bool(d.train_split), "data.train_split", "camvid needs a split folder name")


def _check_rest(cfg: Config2D) -> None:
    loss = cfg.loss
    require(loss.ce_weight + loss.dice_weight > 0, "loss.ce_weight", f"got ce_weight {loss.ce_weight:g} and "
            f"dice_weight {loss.dice_weight:g}; expected ce_weight + dice_weight > 0")
    # An auxiliary head outside the loss gets no gradient: DDP then fails at step 2 (a parameter
    # that took no part in the loss), and on one process it only costs time.
    require(not (cfg.model.aux and loss.aux_weight == 0), "model.aux",
            "true with loss.aux_weight 0 leaves the auxiliary head without a gradient (DDP fails at step 2); "
            "set loss.aux_weight > 0 (0.4 is usual) or model.aux false")
    check_loop_sections(cfg.train, cfg.optim)


def check_config_2d(cfg: Config2D) -> None:
    """Value ranges (RANGES_2D), then the rules that tie fields together."""
    check_ranges(cfg, RANGES_2D)
    _check_model(cfg.model)
    _check_data(cfg)
    _check_rest(cfg)


def resolve_data_arg(path: Path) -> tuple[Path, list[str]]:
    """`--data` for 2D: a dataset root folder, or a YAML with `root:` plus data.* keys (as overrides)."""
    path = Path(path)
    if path.is_dir():
        return path, []
    if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
        raise InputError(path, "2D dataset not found; expected the dataset root folder (or a YAML with "
                               "root: and data keys such as format: camvid)")
    mapping = load_yaml_mapping(path)
    if "root" not in mapping:
        raise InputError(path, "missing key root: (the dataset folder, relative to this file)")
    root = (path.parent / str(mapping.pop("root"))).resolve()
    if not root.is_dir():
        raise InputError(path, f"root {root} is not a folder")
    return root, [f"data.{k}={_as_json(path, k, v)}" for k, v in mapping.items()]  # JSON is valid YAML


def _as_json(path: Path, key: str, value: object) -> str:
    """A data key's value as JSON; YAML's own types (a date such as 2024-01-15, !!binary, !!set) are refused."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise InputError(path, f"{key}: {value!r} is a {type(value).__name__}, not a number, string, list or "
                               "mapping; expected a value of the data section (quote it if it is a name)") from None
