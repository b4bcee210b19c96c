"""int8 post-training quantization: a briefly trained DeepLabV3+ keeps >= 95% of its fp32 pixel labels."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from brats_seg.bench.seg2d import benchmark_latency
from brats_seg.models import create_model
from brats_seg.seg2d.quantize import cat_common_scale, pixel_agreement, quantize_int8

torch.set_num_threads(1)


def _shapes_batch(n: int, generator: torch.Generator, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy grey background (class 0) with a red rectangle (1) and a blue disc (2)."""
    images = 0.1 * torch.randn(n, 3, size, size, generator=generator)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        y0, x0, h, w = torch.randint(0, size // 2, (4,), generator=generator).tolist()
        masks[i, y0:y0 + h + 8, x0:x0 + w + 8] = 1
        cy, cx, r = *torch.randint(12, size - 12, (2,), generator=generator).tolist(), 10
        masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 2
    colours = torch.tensor([[0.0, 0.0, 0.0], [1.5, -1.0, -1.0], [-1.0, -1.0, 1.5]])
    images += colours[masks].permute(0, 3, 1, 2)
    return images, masks


def _trained(backbone: str, steps: int = 40, **cfg) -> tuple[torch.nn.Module, torch.Generator]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = create_model("deeplabv3plus", num_classes=3, backbone=backbone, aspp_channels=32, **cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        x, y = _shapes_batch(4, g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), g


@pytest.mark.parametrize("backbone,cfg", [("mobilenet_v2", {"width_mult": 0.5}), ("resnet18", {})])
def test_int8_agrees_with_fp32(backbone, cfg):
    model, g = _trained(backbone, **cfg)
    calibration = [_shapes_batch(2, g)[0] for _ in range(4)]
    test_images, test_masks = _shapes_batch(4, g)
    with torch.no_grad():
        fp32_accuracy = (model(test_images).argmax(1) == test_masks).float().mean()
    assert fp32_accuracy > 0.8  # the model learnt something, so agreement is not trivial
    qmodel = quantize_int8(model, calibration)
    kinds = {type(m).__module__ for m in qmodel.modules()}
    assert any(k.startswith("torch.ao.nn.quantized") for k in kinds), kinds  # really int8 kernels
    assert pixel_agreement(model, qmodel, [test_images]) >= 0.95


def test_cat_of_differently_scaled_int8_tensors_does_not_clip():
    a = torch.quantize_per_tensor(torch.tensor([0.5, 1.0]), 0.01, 0, torch.quint8)
    b = torch.quantize_per_tensor(torch.tensor([5.0, 10.0]), 0.1, 0, torch.quint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.cat([a, b]).dequantize()[-1] < 3  # the stock kernel clips to a's range
    assert cat_common_scale([a, b]).dequantize().tolist() == pytest.approx([0.5, 1.0, 5.0, 10.0], abs=0.05)


def test_dilated_depthwise_convs_stay_fp32():
    model = create_model("deeplabv3plus", num_classes=3, backbone="mobilenet_v2", width_mult=0.35,
                         aspp_channels=16).eval()
    qmodel = quantize_int8(model, [torch.randn(1, 3, 64, 64)])
    convs = {n: m for n, m in qmodel.named_modules() if "features.15.conv.1" in n or "features.15.conv.0" in n}
    # features.15 is dilated at output stride 16: its depthwise conv stays float, its 1x1 convs are int8
    assert any(type(m) is torch.nn.Conv2d and m.dilation == (2, 2) for m in convs.values()), convs
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in convs.values()), convs


def test_benchmark_latency_reports_and_restores_threads():
    model = torch.nn.Conv2d(3, 4, 3)
    before = torch.get_num_threads()
    result = benchmark_latency(model, (1, 3, 16, 16), threads=1, repeats=3, warmup=1)
    assert set(result) == {"median_ms", "mean_ms", "min_ms"} and 0 < result["min_ms"] <= result["median_ms"]
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="calibration"):
        quantize_int8(model, [])
