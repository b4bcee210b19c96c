"""DeepLabV3+ (Chen et al. 2018): ASPP on a dilated backbone plus a light stride-4 decoder.

ASPP: a 1x1 branch, three atrous 3x3 branches (rates 6/12/18 at output stride 16, doubled at
8, so the field of view stays the same in pixels of the input), and an image-pooling branch;
each with BN+ReLU; concatenated, projected by a 1x1 conv, then dropout (0.5 by default).
Decoder: a 48-channel 1x1 projection of the stride-4 features (kept small so the upsampled ASPP
output dominates), concat, two 3x3 conv+BN+ReLU, a 1x1 classifier, bilinear upsampling x4.
Training needs batches of 2 or more: the pooling branch's BN sees one value per channel per image.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from brats_seg.models.backbones2d import build_backbone
from brats_seg.models.fcn import FCNHead
from brats_seg.models.weights import load_backbone_weights

_BASE_RATES = (6, 12, 18)


def _cbr(cin: int, cout: int, k: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPPPooling(nn.Module):
    """Global average pool -> 1x1 conv+BN+ReLU -> broadcast back: the image-level context branch."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.proj = _cbr(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(self.pool(x))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int = 256, rates: tuple[int, ...] = _BASE_RATES, dropout: float = 0.5):
        super().__init__()
        branches = [_cbr(cin, cout)] + [_cbr(cin, cout, 3, r) for r in rates] + [ASPPPooling(cin, cout)]
        self.branches = nn.ModuleList(branches)
        self.project = _cbr(cout * len(branches), cout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([b(x) for b in self.branches], dim=1)
        return self.dropout(self.project(y))


class Decoder(nn.Module):
    def __init__(self, low_channels: int, num_classes: int, aspp_channels: int = 256, low_proj: int = 48):
        super().__init__()
        self.low = _cbr(low_channels, low_proj)
        self.fuse = nn.Sequential(_cbr(aspp_channels + low_proj, aspp_channels, 3),
                                  _cbr(aspp_channels, aspp_channels, 3))
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)

    def forward(self, aspp: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.low(low)
        aspp = F.interpolate(aspp, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([aspp, low], dim=1)))


class DeepLabV3Plus(nn.Module):
    def __init__(self, num_classes: int, backbone: str = "resnet50", output_stride: int = 16,
                 aux: bool = False, dropout: float = 0.5, aspp_channels: int = 256, width_mult: float = 1.0):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"DeepLabV3+ output_stride must be 8 or 16, got {output_stride}")
        if backbone == "vgg16":
            raise ValueError("DeepLabV3+ needs a ResNet or mobilenet_v2 backbone, got vgg16")
        self.backbone = build_backbone(backbone, output_stride, width_mult)
        ch = self.backbone.channels
        rates = tuple(r * 16 // output_stride for r in _BASE_RATES)
        self.aspp = ASPP(ch["out"], aspp_channels, rates, dropout)
        self.decoder = Decoder(ch["low"], num_classes, aspp_channels)
        self.aux_head = FCNHead(ch["c4"], num_classes) if aux else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        feats = self.backbone(x)
        y = self.decoder(self.aspp(feats["out"]), feats["low"])
        out = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.training and self.aux_head is not None:
            aux = self.aux_head(feats["c4"])
            return {"out": out, "aux": F.interpolate(aux, size=x.shape[-2:], mode="bilinear", align_corners=False)}
        return out


def deeplabv3plus(num_classes: int = 21, backbone: str = "resnet50", output_stride: int = 16,
                  aux: bool = False, pretrained_backbone: str | None = None, dropout: float = 0.5,
                  aspp_channels: int = 256, width_mult: float = 1.0) -> nn.Module:
    """DeepLabV3+ on resnet18/34/50/101 or mobilenet_v2; `pretrained_backbone` is a torchvision .pth path."""
    model = DeepLabV3Plus(num_classes, backbone, output_stride, aux, dropout, aspp_channels, width_mult)
    if pretrained_backbone:
        load_backbone_weights(model.backbone, pretrained_backbone)
    return model
