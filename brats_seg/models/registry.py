"""One explicit registry for every network, 3D and 2D: `create_model(name, **cfg)`.

Modules are listed by name (no folder scanning) and imported only when a model is built, so
`import brats_seg` stays fast and a broken optional model never breaks the others.
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch.nn as nn

# name -> "module:factory". Helpers add their entries here, one line each.
_BUILTIN: dict[str, str] = {
    "attention_unet3d": "brats_seg.models.attention_unet3d:AttentionUNet3D",
    "monai_unet3d": "brats_seg.models.monai_nets:monai_unet3d",
    "monai_attention_unet3d": "brats_seg.models.monai_nets:monai_attention_unet3d",
    "fcn32s": "brats_seg.models.fcn:fcn32s",
    "fcn16s": "brats_seg.models.fcn:fcn16s",
    "fcn8s": "brats_seg.models.fcn:fcn8s",
    "deeplabv3plus": "brats_seg.models.deeplabv3plus:deeplabv3plus",
}
_EXTRA: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, factory: Callable[..., nn.Module]) -> None:
    """Add a model factory under `name` (for plug-ins and tests)."""
    if name in _BUILTIN or name in _EXTRA:
        raise ValueError(f"model name already registered: {name}")
    _EXTRA[name] = factory


def available_models() -> list[str]:
    return sorted({*_BUILTIN, *_EXTRA})


def _resolve(name: str) -> Callable[..., nn.Module]:
    if name in _EXTRA:
        return _EXTRA[name]
    if name not in _BUILTIN:
        raise KeyError(f"unknown model {name!r}; valid names: {', '.join(available_models())}")
    module_name, attr = _BUILTIN[name].split(":")
    return getattr(importlib.import_module(module_name), attr)


def create_model(name: str, **cfg) -> nn.Module:
    """Build the model `name` with keyword configuration `cfg`."""
    return _resolve(name)(**cfg)
