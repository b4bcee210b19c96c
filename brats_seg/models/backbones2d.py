"""2D ImageNet backbones (VGG16, ResNet-18/34/50/101, MobileNetV2) in plain torch.

Parameter names and shapes follow torchvision's models, so a torchvision `.pth` file loads into
them by path (see `brats_seg.models.weights`). The ImageNet classifier heads are not built: the
segmentation models do not use them, and unused parameters would break DistributedDataParallel.
Each backbone lists the head keys a torchvision file may carry in `tv_head_keys`.

Every backbone returns a dict of feature maps:
  "low" stride 4, "c3" stride 8, "c4" stride 16 (or less when dilated), "out" the final map.
`channels[name]` and `strides[name]` give their widths and true strides.
"""
from __future__ import annotations

import torch
import torch.nn as nn

FeatureDict = dict[str, torch.Tensor]


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> list[nn.Module]:
    pad = dilation * (k - 1) // 2
    conv = nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


def _init_weights(module: nn.Module) -> None:
    """He init for convs, identity BN: the usual from-scratch start for ReLU networks."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _stage_dilations(strides: list[int], output_stride: int) -> tuple[list[int], list[int]]:
    """Per stage (stride, dilation of its later blocks), turning strides into dilation past `output_stride`.

    The first block of a dilated stage keeps the previous dilation (as in DeepLab), so each stage
    is returned as (stride, dilation) and the caller gives the first block the previous value.
    """
    current, dilation = 1, 1
    out_strides, out_dilations = [], []
    for s in strides:
        if current * s > output_stride:
            dilation *= s
            s = 1
        current *= s
        out_strides.append(s)
        out_dilations.append(dilation)
    return out_strides, out_dilations


def _check_output_stride(output_stride: int, allowed: tuple[int, ...], name: str) -> None:
    if output_stride not in allowed:
        raise ValueError(f"{name}: output_stride must be one of {allowed}, got {output_stride}")


# ----------------------------------------------------------------------------------- ResNet
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, first_dilation: int,
                 downsample: nn.Module | None):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 3, stride, first_dilation)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, 1, dilation)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet V1.5 bottleneck: the stride sits on the 3x3 conv, as in torchvision."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, first_dilation: int,
                 downsample: nn.Module | None):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride, first_dilation)
        self.conv3, self.bn3 = _conv_bn(planes, planes * 4, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_RESNET_SPECS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """ResNet trunk; output stride 8/16 replaces the stride of layer3/layer4 with dilation."""

    tv_head_keys = ("fc.weight", "fc.bias")

    def __init__(self, depth: str = "resnet50", output_stride: int = 32):
        super().__init__()
        _check_output_stride(output_stride, (8, 16, 32), depth)
        block, counts = _RESNET_SPECS[depth]
        self.name = depth
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        strides, dilations = _stage_dilations([1, 2, 2, 2], output_stride // 4)
        self._cin, prev_dilation = 64, 1
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), counts)):
            layer = self._make_layer(block, planes, n, strides[i], dilations[i], prev_dilation)
            setattr(self, f"layer{i + 1}", layer)
            prev_dilation = dilations[i]
        e = block.expansion
        self.channels = {"low": 64 * e, "c3": 128 * e, "c4": 256 * e, "out": 512 * e}
        s = [4 * strides[0]]
        for st in strides[1:]:
            s.append(s[-1] * st)
        self.strides = dict(zip(("low", "c3", "c4", "out"), s))
        _init_weights(self)

    def _make_layer(self, block: type, planes: int, n: int, stride: int, dilation: int,
                    first_dilation: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._cin != planes * block.expansion:
            downsample = nn.Sequential(*_conv_bn(self._cin, planes * block.expansion, 1, stride))
        blocks = [block(self._cin, planes, stride, dilation, first_dilation, downsample)]
        self._cin = planes * block.expansion
        blocks += [block(self._cin, planes, 1, dilation, dilation, None) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> FeatureDict:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        c3 = self.layer2(low)
        c4 = self.layer3(c3)
        return {"low": low, "c3": c3, "c4": c4, "out": self.layer4(c4)}


# ------------------------------------------------------------------------------ MobileNetV2
def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of 8 without losing more than 10% (keeps torchvision's widths)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNReLU6(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, groups: int = 1):
        super().__init__(*_conv_bn(cin, cout, k, stride, dilation, groups), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, dilation: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [ConvBNReLU6(cin, hidden, 1)]
        layers.append(ConvBNReLU6(hidden, hidden, 3, stride, dilation, groups=hidden))
        layers += _conv_bn(hidden, cout, 1)
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


# (expansion t, channels c, repeats n, stride s) per stage, from the MobileNetV2 paper.
_MBV2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                  (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_MBV2_SPLITS = {"low": (0, 4), "c3": (4, 7), "c4": (7, 14), "out": (14, 18)}


class MobileNetV2(nn.Module):
    """MobileNetV2 `features.0..17`; the 1280-wide `features.18` and classifier are left out.

    DeepLab keeps the 320-channel map: the extra 1x1 conv to 1280 only adds compute in front
    of ASPP. Output stride 8/16 dilates the later inverted-residual stages.
    """

    def __init__(self, output_stride: int = 32, width_mult: float = 1.0):
        super().__init__()
        _check_output_stride(output_stride, (8, 16, 32), "mobilenet_v2")
        self.name = "mobilenet_v2"
        cin = _make_divisible(32 * width_mult)
        features: list[nn.Module] = [ConvBNReLU6(3, cin, 3, 2)]
        stage_strides, dilations = _stage_dilations([s for *_, s in _MBV2_SETTINGS], output_stride // 2)
        prev_dilation, stride_now, widths = 1, 2, []
        for (t, c, n, _), s, d in zip(_MBV2_SETTINGS, stage_strides, dilations):
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, prev_dilation if i == 0 else d))
                cin = cout
            prev_dilation, stride_now = d, stride_now * s
            widths.append((cout, stride_now))
        self.features = nn.Sequential(*features)
        self.tv_head_keys = tuple(self._tv_head_keys())
        # stage index ending each split: low=stage 1 (24ch), c3=stage 2, c4=stage 4, out=stage 6
        ends = {"low": 1, "c3": 2, "c4": 4, "out": 6}
        self.channels = {k: widths[i][0] for k, i in ends.items()}
        self.strides = {k: widths[i][1] for k, i in ends.items()}
        _init_weights(self)

    @staticmethod
    def _tv_head_keys() -> list[str]:
        keys = ["features.18.0.weight", "classifier.1.weight", "classifier.1.bias"]
        bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        return keys + [f"features.18.1.{p}" for p in bn]

    def forward(self, x: torch.Tensor) -> FeatureDict:
        out: FeatureDict = {}
        for name, (a, b) in _MBV2_SPLITS.items():
            for i in range(a, b):
                x = self.features[i](x)
            out[name] = x
        return out


# ------------------------------------------------------------------------------------ VGG16
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_VGG_POOLS = {"low": 9, "c3": 16, "c4": 23, "out": 30}  # features.N index of each max-pool


class VGG16(nn.Module):
    """VGG16 `features` (convs with bias, no BN). Output stride is always 32.

    `first_padding=100` is the original FCN trick: it lets the 7x7 fc6 run on any input size,
    and the FCN head crops the result back into alignment. Pools use ceil_mode like Caffe.
    """

    tv_head_keys = tuple(f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias"))

    def __init__(self, output_stride: int = 32, first_padding: int = 1, ceil_mode: bool = True):
        super().__init__()
        _check_output_stride(output_stride, (32,), "vgg16 (dilated VGG is not supported)")
        self.name = "vgg16"
        layers: list[nn.Module] = []
        cin = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=ceil_mode))
                continue
            pad = first_padding if not layers else 1
            layers += [nn.Conv2d(cin, int(v), 3, padding=pad), nn.ReLU(inplace=True)]
            cin = int(v)
        self.features = nn.Sequential(*layers)
        self.channels = {"low": 128, "c3": 256, "c4": 512, "out": 512}
        self.strides = {"low": 4, "c3": 8, "c4": 16, "out": 32}
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> FeatureDict:
        out: FeatureDict = {}
        start = 0
        for name, end in _VGG_POOLS.items():
            for i in range(start, end + 1):
                x = self.features[i](x)
            out[name] = x
            start = end + 1
        return out


BACKBONES = ("vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2")


def build_backbone(name: str, output_stride: int = 32, width_mult: float = 1.0, **kw) -> nn.Module:
    """Backbone by torchvision name. `width_mult` applies to MobileNetV2 only."""
    if name in _RESNET_SPECS:
        return ResNet(name, output_stride)
    if name == "mobilenet_v2":
        return MobileNetV2(output_stride, width_mult)
    if name == "vgg16":
        return VGG16(output_stride, **kw)
    raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
