"""Load a torchvision-format ImageNet checkpoint (`.pth` state dict) into a 2D backbone, by path.

Nothing is downloaded: the user points at a file they already have. The check is strict: every
backbone parameter must be in the file with the same shape, and every key in the file must be a
backbone parameter or one of the ImageNet head keys the backbone lists in `tv_head_keys` (those
are returned, not loaded, so FCN-VGG can turn classifier.0/3 into its fc6/fc7 convs).
`num_batches_tracked` buffers may be absent: torchvision's older files (2017) do not have them.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from brats_seg.core.inputfile import require_regular_file
from brats_seg.errors import InputError

_MAX_LISTED = 6


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a plain tensor state dict with `weights_only=True` (no pickle code runs)."""
    path = Path(path)
    require_regular_file(path, "weights file not found; expected a torchvision .pth state dict",
                         "a torchvision .pth state dict")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(path, f"cannot read weights ({reason}); expected a torchvision .pth state dict") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(path, "file is not a state dict of tensors; expected a torchvision .pth state dict")
    return obj


def _listed(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:_MAX_LISTED])
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def compare_state_dicts(model_sd: dict[str, torch.Tensor], file_sd: dict[str, torch.Tensor]) -> list[str]:
    """Problems between a model's and a file's state dict; empty when they match strictly."""
    problems = []
    missing = [k for k in model_sd if k not in file_sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in file_sd if k not in model_sd]
    if missing:
        problems.append(f"missing keys {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    for k, v in file_sd.items():
        if k in model_sd and v.shape != model_sd[k].shape:
            problems.append(f"shape mismatch at {k}: file {_shape(v)} vs model {_shape(model_sd[k])}")
            if len(problems) > _MAX_LISTED:
                break
    return problems


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> dict[str, torch.Tensor]:
    """Load torchvision weights into `backbone` in place; return the ImageNet head tensors found.

    Raises InputError naming the file, listing missing/unexpected keys and shape mismatches.
    """
    state = read_state_dict(path)
    head_keys = set(getattr(backbone, "tv_head_keys", ()))
    head = {k: v for k, v in state.items() if k in head_keys}
    body = {k: v for k, v in state.items() if k not in head_keys}
    model_sd = backbone.state_dict()
    problems = compare_state_dicts(model_sd, body)
    if problems:
        name = getattr(backbone, "name", type(backbone).__name__)
        raise InputError(path, f"not a torchvision {name} state dict: " + "; ".join(problems))
    for k in model_sd:  # older files lack BN counters; start them at zero
        if k.endswith("num_batches_tracked") and k not in body:
            body[k] = torch.zeros_like(model_sd[k])
    backbone.load_state_dict(body, strict=True)
    return head


def convert_linear_to_conv(path: str | Path, head: dict[str, torch.Tensor], key: str,
                           conv: nn.Conv2d) -> None:
    """Copy a torchvision Linear layer (`key`.weight/.bias) into an equivalent conv ("convolutionalise").

    FCN turns VGG's classifier.0 (4096 x 512*7*7) into fc6 (4096, 512, 7, 7) and classifier.3
    into the 1x1 fc7; the flattening order of torchvision (C, H, W) makes this a plain reshape.
    """
    w, b = head.get(f"{key}.weight"), head.get(f"{key}.bias")
    if w is None or b is None:
        raise InputError(path, f"missing keys [{key}.weight, {key}.bias] needed for the FCN fc layers")
    if w.numel() != conv.weight.numel() or b.shape != conv.bias.shape:
        raise InputError(path, f"shape mismatch at {key}.weight: file {_shape(w)} vs model "
                               f"{_shape(conv.weight)} (fc_channels must be 4096 to use ImageNet fc weights)")
    with torch.no_grad():
        conv.weight.copy_(w.reshape(conv.weight.shape))
        conv.bias.copy_(b)
