"""fp32 vs int8 CPU latency of the 2D models: `python -m brats_seg.seg2d.bench_quant`.

A benchmark, not a test: numbers depend on the CPU and on what else runs on it (on a busy
machine multi-threaded medians swing by 5x; the minimum is steadier). Weights are random
(latency does not depend on them); calibration uses random inputs of the timed size.
"""
from __future__ import annotations

import argparse
import json

import torch

from brats_seg.models import create_model
from brats_seg.seg2d.quantize import benchmark_latency, pixel_agreement, quantize_int8


def run(backbone: str, size: int, threads: int, repeats: int, output_stride: int = 16) -> dict:
    """Latency of DeepLabV3+ on `backbone` at 1x3xSxS, fp32 and int8, with `threads` threads."""
    torch.manual_seed(0)
    model = create_model("deeplabv3plus", num_classes=21, backbone=backbone, output_stride=output_stride).eval()
    shape = (1, 3, size, size)
    calibration = [torch.randn(*shape) for _ in range(2)]
    qmodel = quantize_int8(model, calibration)
    fp32 = benchmark_latency(model, shape, threads, repeats)
    int8 = benchmark_latency(qmodel, shape, threads, repeats)
    return {"model": f"deeplabv3plus-{backbone}-os{output_stride}", "input": list(shape), "threads": threads,
            "fp32_ms": round(fp32["median_ms"], 1), "int8_ms": round(int8["median_ms"], 1),
            "fp32_min_ms": round(fp32["min_ms"], 1), "int8_min_ms": round(int8["min_ms"], 1),
            "speedup": round(fp32["median_ms"] / int8["median_ms"], 2),
            "pixel_agreement_random_weights": round(pixel_agreement(model, qmodel, calibration[:1]), 4)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["mobilenet_v2", "resnet18", "resnet50"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output-stride", type=int, default=16)
    args = parser.parse_args(argv)
    for size in args.sizes:
        for backbone in args.backbones:
            print(json.dumps(run(backbone, size, args.threads, args.repeats, args.output_stride)), flush=True)


if __name__ == "__main__":
    main()
