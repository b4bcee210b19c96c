"""FCN-32s / FCN-16s / FCN-8s (Long, Shelhamer, Darrell 2015), on VGG16 or ResNet.

VGG16 is the original design: conv1_1 padded by 100, fc6/fc7 as 7x7 and 1x1 convs (initialised
from the ImageNet classifier when weights are given), zero-initialised score layers, transposed
convs initialised to bilinear upsampling (learnable, no bias), and crops with the offsets of the
reference Caffe models to put every map back into register with the input.

The ResNet variant scores layer4 with a small conv head and fuses skips from layer3 (stride 16)
and layer2 (stride 8) after bilinear upsampling; with output_stride 16 or 8 the dilated maps
share a size and the fusion is a plain sum. Output: logits at the input resolution, or
{"out", "aux"} in training when aux=True (ResNet only; aux scores layer3 like torchvision).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from brats_seg.models.backbones2d import BACKBONES, build_backbone
from brats_seg.models.weights import convert_linear_to_conv, load_backbone_weights


def bilinear_kernel(channels: int, kernel: int) -> torch.Tensor:
    """Per-channel bilinear interpolation weights for a transposed conv (no cross-channel mixing)."""
    factor = (kernel + 1) // 2
    centre = factor - 1 if kernel % 2 == 1 else factor - 0.5
    ramp = 1 - (torch.arange(kernel, dtype=torch.float32) - centre).abs() / factor
    weight = torch.zeros(channels, channels, kernel, kernel)
    weight[range(channels), range(channels)] = ramp[:, None] * ramp[None, :]
    return weight


def _upscore(channels: int, factor: int) -> nn.ConvTranspose2d:
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return up


def _crop(x: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    h, w = like.shape[-2], like.shape[-1]
    return x[:, :, offset:offset + h, offset:offset + w]


def _zero_conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class FCNVGG(nn.Module):
    """The original FCN on VGG16; `skips` = 0 (32s), 1 (16s) or 2 (8s)."""

    def __init__(self, num_classes: int, skips: int, fc_channels: int = 4096, dropout: float = 0.5):
        super().__init__()
        self.skips = skips
        self.backbone = build_backbone("vgg16", 32, first_padding=100)
        self.fc6 = nn.Conv2d(512, fc_channels, 7)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.drop = nn.Dropout2d(dropout)
        self.relu = nn.ReLU(inplace=True)
        self.score_fr = _zero_conv(fc_channels, num_classes)
        if skips == 0:
            self.upscore = _upscore(num_classes, 32)
        else:
            self.upscore2 = _upscore(num_classes, 2)
            self.score_pool4 = _zero_conv(512, num_classes)
        if skips == 1:
            self.upscore16 = _upscore(num_classes, 16)
        if skips == 2:
            self.upscore_pool4 = _upscore(num_classes, 2)
            self.score_pool3 = _zero_conv(256, num_classes)
            self.upscore8 = _upscore(num_classes, 8)

    def load_imagenet(self, path: str) -> None:
        head = load_backbone_weights(self.backbone, path)
        convert_linear_to_conv(path, head, "classifier.0", self.fc6)
        convert_linear_to_conv(path, head, "classifier.3", self.fc7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        h = self.drop(self.relu(self.fc6(feats["out"])))
        h = self.drop(self.relu(self.fc7(h)))
        h = self.score_fr(h)
        if self.skips == 0:
            return _crop(self.upscore(h), 19, x)
        h = self.upscore2(h)
        h = h + _crop(self.score_pool4(feats["c4"]), 5, h)
        if self.skips == 1:
            return _crop(self.upscore16(h), 27, x)
        h = self.upscore_pool4(h)
        h = h + _crop(self.score_pool3(feats["c3"]), 9, h)
        return _crop(self.upscore8(h), 31, x)


class FCNHead(nn.Sequential):
    """3x3 conv to a quarter width, BN, ReLU, dropout, 1x1 scores (torchvision's FCN head shape)."""

    def __init__(self, cin: int, num_classes: int, dropout: float = 0.1):
        mid = max(cin // 4, 8)
        super().__init__(nn.Conv2d(cin, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid),
                         nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Conv2d(mid, num_classes, 1))


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class FCNResNet(nn.Module):
    """FCN with skip fusion on a ResNet or MobileNetV2 trunk (bilinear upsampling, no crops)."""

    def __init__(self, num_classes: int, skips: int, backbone: str, output_stride: int = 32,
                 aux: bool = False, width_mult: float = 1.0):
        super().__init__()
        self.skips = skips
        self.backbone = build_backbone(backbone, output_stride, width_mult)
        ch = self.backbone.channels
        self.head = FCNHead(ch["out"], num_classes)
        self.score_c4 = nn.Conv2d(ch["c4"], num_classes, 1) if skips >= 1 else None
        self.score_c3 = nn.Conv2d(ch["c3"], num_classes, 1) if skips >= 2 else None
        self.aux_head = FCNHead(ch["c4"], num_classes) if aux else None

    def load_imagenet(self, path: str) -> None:
        load_backbone_weights(self.backbone, path)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        feats = self.backbone(x)
        h = self.head(feats["out"])
        if self.score_c4 is not None:
            s4 = self.score_c4(feats["c4"])
            h = _up(h, s4) + s4
        if self.score_c3 is not None:
            s3 = self.score_c3(feats["c3"])
            h = _up(h, s3) + s3
        out = _up(h, x)
        if self.training and self.aux_head is not None:
            return {"out": out, "aux": _up(self.aux_head(feats["c4"]), x)}
        return out


def _build(skips: int, num_classes: int, backbone: str, output_stride: int | None, aux: bool,
           pretrained_backbone: str | None, **kw) -> nn.Module:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
    if backbone == "vgg16":
        if aux:
            raise ValueError("aux=True needs a ResNet/MobileNetV2 backbone; the VGG FCN has no aux head")
        if output_stride not in (None, 32):
            raise ValueError(f"FCN-VGG16 has output stride 32 only, got {output_stride}")
        if kw.pop("width_mult", 1.0) != 1.0:
            raise ValueError("width_mult applies to mobilenet_v2 only, not vgg16")
        model: nn.Module = FCNVGG(num_classes, skips, **kw)
    else:
        model = FCNResNet(num_classes, skips, backbone, output_stride or 32, aux, **kw)
    if pretrained_backbone:
        model.load_imagenet(pretrained_backbone)
    return model


def fcn32s(num_classes: int = 21, backbone: str = "vgg16", output_stride: int | None = None,
           aux: bool = False, pretrained_backbone: str | None = None, **kw) -> nn.Module:
    """FCN-32s: scores only the last map. `kw`: fc_channels/dropout (VGG), width_mult (MobileNetV2)."""
    return _build(0, num_classes, backbone, output_stride, aux, pretrained_backbone, **kw)


def fcn16s(num_classes: int = 21, backbone: str = "vgg16", output_stride: int | None = None,
           aux: bool = False, pretrained_backbone: str | None = None, **kw) -> nn.Module:
    """FCN-16s: adds the stride-16 skip (pool4 / layer3)."""
    return _build(1, num_classes, backbone, output_stride, aux, pretrained_backbone, **kw)


def fcn8s(num_classes: int = 21, backbone: str = "vgg16", output_stride: int | None = None,
          aux: bool = False, pretrained_backbone: str | None = None, **kw) -> nn.Module:
    """FCN-8s: adds the stride-16 and stride-8 skips (pool4+pool3 / layer3+layer2)."""
    return _build(2, num_classes, backbone, output_stride, aux, pretrained_backbone, **kw)
