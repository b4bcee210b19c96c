"""MONAI reference networks behind the same keyword names as AttentionUNet3D.

They let a run compare the in-house Attention U-Net with MONAI's well-tested implementations by
changing only the model name in the config. Both return logits and need spatial sizes divisible by
2**(len(features)-1). Extra keywords go to the MONAI constructor unchanged.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch.nn as nn


def _strides(features: Sequence[int]) -> tuple[int, ...]:
    if len(features) < 2:
        raise ValueError(f"features needs >= 2 widths (one per level), got {tuple(features)}")
    return (2,) * (len(features) - 1)


def monai_unet3d(in_channels: int = 4, out_channels: int = 3,
                 features: Sequence[int] = (16, 32, 64, 128, 256), **kw: Any) -> nn.Module:
    """MONAI residual UNet (strides 2, two residual units per level, instance norm)."""
    from monai.networks.nets import UNet

    kw.setdefault("num_res_units", 2)
    kw.setdefault("norm", "instance")
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                channels=tuple(features), strides=_strides(features), **kw)


def monai_attention_unet3d(in_channels: int = 4, out_channels: int = 3,
                           features: Sequence[int] = (16, 32, 64, 128, 256),
                           **kw: Any) -> nn.Module:
    """MONAI AttentionUnet (additive gates on each skip, strides 2)."""
    from monai.networks.nets import AttentionUnet

    return AttentionUnet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                         channels=tuple(features), strides=_strides(features), **kw)
