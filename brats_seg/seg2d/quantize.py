"""int8 post-training static quantization for CPU deployment: the one FX prepare/calibrate/convert flow.

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

seg2d/int8.py builds the checkpoint recipe (calibration on dataset images, a weights_only file)
on this flow; the fp32-vs-int8 latency comparison is a benchmark (bench/seg2d.py).
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Iterable, Iterator

import torch
import torch.nn as nn

from brats_seg.errors import InputError

_QUIET = (r".*torch\.ao\.quantization is deprecated.*", r".*reduce_range will be deprecated.*",
          r".*quantized tensor creation functions.*", r".*torch\.jit\..* is deprecated.*")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the deprecation warnings of torch.ao.quantization and torch.jit (here only)."""
    with warnings.catch_warnings():
        for pattern in _QUIET:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def quantize_int8(model: nn.Module, calibration_batches: Iterable[torch.Tensor],
                  backend: str = "x86") -> nn.Module:
    """Return an int8 copy of `model`, calibrated on `calibration_batches` (input tensors, NCHW).

    Per-channel weights, per-tensor activations (the backend's default qconfig). A few to a few
    dozen representative images are enough: observers only record activation ranges.
    Sets `torch.backends.quantized.engine` to `backend`: the int8 kernels run on that engine.
    """
    batches = list(calibration_batches)
    if not batches:
        raise ValueError("quantize_int8 needs at least one calibration batch")
    prepared = prepare_observed(model, backend, batches[0])
    with torch.no_grad():
        for x in batches:
            prepared(x.cpu())
    return convert_observed(prepared)


def prepare_observed(model: nn.Module, backend: str = "x86",
                     example: torch.Tensor | None = None) -> torch.fx.GraphModule:
    """fp32 copy of `model` with observers inserted (deterministic: a reload re-inserts the same ones)."""
    from torch.ao.quantization.quantize_fx import prepare_fx

    if backend not in torch.backends.quantized.supported_engines:
        raise InputError("--backend", f"{backend!r} not available; supported: "
                                      f"{', '.join(torch.backends.quantized.supported_engines)}")
    torch.backends.quantized.engine = backend
    float_model = copy.deepcopy(model).cpu().eval()
    example = torch.zeros(1, 3, 64, 64) if example is None else example.cpu()
    with quiet():
        return prepare_fx(float_model, int8_qconfig_mapping(float_model, backend), example_inputs=(example,))


def convert_observed(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """int8 GraphModule from a calibrated prepared model (a copy: `prepared` keeps its statistics)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    with quiet():
        return fix_quantized_cat(convert_fx(copy.deepcopy(prepared)))


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


def fix_quantized_cat(graph_module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Replace every torch.cat of the converted graph by cat_common_scale (in place; returned)."""
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target is torch.cat:
            node.target = cat_common_scale
    graph_module.recompile()
    return graph_module


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
