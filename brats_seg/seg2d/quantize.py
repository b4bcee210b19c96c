"""int8 post-training static quantization for CPU deployment, and a latency benchmark.

What works on torch 2.13 (CPU build), checked when this was written:
- FX graph mode (`torch.ao.quantization.quantize_fx.prepare_fx/convert_fx`) with the "x86"
  qconfig mapping works for FCN/DeepLabV3+ (ResNet and MobileNetV2): it fuses conv+BN(+ReLU),
  inserts observers, and after calibration swaps in quantized kernels (fbgemm/oneDNN), so the
  int8 model is a plain `GraphModule` that runs on any x86 CPU. It warns that torch.ao.quantization
  is deprecated in favour of torchao; that warning is silenced here and only here.
- The PT2E flow is not usable: `torch.ao.quantization.quantize_pt2e` and `.quantizer` were removed
  from torch (moved to torchao), and torchao is not installed.
- Eager mode (QuantStub) would need hand-written fusion lists and FloatFunctional for every add
  and cat; FX does both from the traced graph, so eager mode was not used.

Models must be FX-traceable (no data-dependent Python control flow); the 2D models here are.
The quantized model returns the eval-mode output (a tensor; aux heads are off in eval).

Two fixes on top of the default flow, both found by measurement:
- Dilated depthwise convs (MobileNetV2 at output stride 8/16) have no fast int8 kernel in fbgemm
  (~9 ms each at 16x16x960, which made int8 DeepLabV3+-MobileNetV2 no faster than fp32); they
  stay fp32, at the cost of a dequantize/quantize pair around each.
- FX leaves `torch.cat` of differently scaled int8 tensors (ASPP branches, decoder inputs) to the
  quantized cat kernel, which silently uses the first input's scale and clips the others
  (cat of [1.0] at scale 0.01 and [10.0] at scale 0.1 gives [1.0, 2.55]). Each such cat is
  replaced by one that requantizes all inputs to a common range covering every input.
"""
from __future__ import annotations

import copy
import statistics
import time
import warnings
from typing import Iterable

import torch
import torch.nn as nn


def quantize_int8(model: nn.Module, calibration_batches: Iterable[torch.Tensor],
                  backend: str = "x86") -> nn.Module:
    """Return an int8 copy of `model`, calibrated on `calibration_batches` (input tensors, NCHW).

    Per-channel weights, per-tensor activations (the backend's default qconfig). A few to a few
    dozen representative images are enough: observers only record activation ranges.
    Sets `torch.backends.quantized.engine` to `backend`: the int8 kernels run on that engine.
    """
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if backend not in torch.backends.quantized.supported_engines:
        raise ValueError(f"quantization backend {backend!r} not available; "
                         f"supported: {torch.backends.quantized.supported_engines}")
    torch.backends.quantized.engine = backend
    batches = list(calibration_batches)
    if not batches:
        raise ValueError("quantize_int8 needs at least one calibration batch")
    float_model = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*reduce_range will be deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*")
        qconfig = int8_qconfig_mapping(float_model, backend)
        prepared = prepare_fx(float_model, qconfig, example_inputs=(batches[0],))
        with torch.no_grad():
            for x in batches:
                prepared(x.cpu())
        return _fix_quantized_cat(convert_fx(prepared))


def int8_qconfig_mapping(model: nn.Module, backend: str = "x86"):
    """The backend's default mapping, minus the ops that are slower or riskier in int8 (see above)."""
    from torch.ao.quantization import get_default_qconfig_mapping

    mapping = get_default_qconfig_mapping(backend)
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1 and module.dilation != (1, 1):
            mapping.set_module_name(name, None)
    return mapping


def cat_common_scale(tensors: list[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """torch.cat that requantizes int8 inputs to one scale covering all their ranges (no clipping)."""
    if not all(t.is_quantized and t.dtype == torch.quint8 for t in tensors) \
            or len({(t.q_scale(), t.q_zero_point()) for t in tensors}) == 1:
        return torch.cat(tensors, dim=dim)
    lows = [(0 - t.q_zero_point()) * t.q_scale() for t in tensors]
    highs = [(255 - t.q_zero_point()) * t.q_scale() for t in tensors]
    low, high = min(min(lows), 0.0), max(max(highs), 0.0)
    scale = max((high - low) / 255.0, 1e-8)
    zero_point = int(min(max(round(-low / scale), 0), 255))
    return torch.ops.quantized.cat(list(tensors), dim, scale, zero_point)


def _fix_quantized_cat(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target is torch.cat:
            node.target = cat_common_scale
    graph_module.recompile()
    return graph_module


def benchmark_latency(model: nn.Module, input_shape: tuple[int, ...], threads: int = 2,
                      repeats: int = 10, warmup: int = 2) -> dict[str, float]:
    """Wall-clock latency of one forward pass in ms (median, mean, min) with `threads` intra-op threads.

    Timing noise on a shared machine is large; report the median. Restores the thread count.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.randn(*input_shape)
    model = model.eval()
    times = []
    try:
        with torch.no_grad():
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - start) * 1000.0)
    finally:
        torch.set_num_threads(previous)
    return {"median_ms": statistics.median(times), "mean_ms": statistics.fmean(times), "min_ms": min(times)}


def pixel_agreement(model_a: nn.Module, model_b: nn.Module, batches: Iterable[torch.Tensor]) -> float:
    """Fraction of pixels where the two models' argmax labels agree (int8 vs fp32 check)."""
    same = total = 0
    with torch.no_grad():
        for x in batches:
            a = model_a(x).argmax(1)
            b = model_b(x).argmax(1)
            same += int((a == b).sum())
            total += a.numel()
    return same / max(total, 1)
