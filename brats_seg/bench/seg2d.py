"""`brats-seg bench 2d`: fp32 vs int8 DeepLabV3+ on real images, latency and mIoU side by side.

Random weights would make the mIoU column meaningless, so the benchmark scores a trained model:
a given run/checkpoint, or (by default) DeepLabV3+ trained for a few CPU minutes on the six
CamVid sample images with pipelines/train/camvid_deeplabv3plus.yaml. It is then quantized (calibrated
on the same images) and both models are timed interleaved at the network's input size and
scored on the same images (compare_fp32_int8, which `brats-seg quantize` prints as well).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch

from brats_seg.bench.common import alternate, best_round_median, markdown_table, seconds
from brats_seg.errors import InputError
from brats_seg.seg2d.int8 import QuantizedCheckpoint, quantize_checkpoint, save_torchscript, score_pair

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "pipelines" / "train" / "camvid_deeplabv3plus.yaml"
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "camvid_segnet_samples"


def train_quick_model(data: Path, out_dir: Path, config: Path, train_seconds: float,
                      overrides: Sequence[str] = ()) -> Path:
    """Train the benchmark model into out_dir/train (time-boxed); returns the run folder."""
    from brats_seg.seg2d.trainer import load_run_config, train_2d

    if not Path(config).is_file():
        raise InputError(config, "training recipe not found; pass --model RUN_OR_CKPT or --config YAML")
    run_dir = Path(out_dir) / "train"
    cfg, root = load_run_config(Path(config), Path(data), run_dir, False,
                                [f"train.time_budget_s={train_seconds}", *overrides])
    code = train_2d(cfg, root, run_dir, resume=False)
    if code != 0:
        raise RuntimeError(f"benchmark training stopped with exit code {code}")
    return run_dir


def benchmark_latency(model: torch.nn.Module, input_shape: tuple[int, ...], threads: int = 2,
                      repeats: int = 10, warmup: int = 2) -> dict[str, float]:
    """Wall-clock latency of one forward pass in ms (median, mean, min) with `threads` intra-op threads.

    Timing noise on a shared machine is large; report the median. Restores the thread count.
    """
    x, model = torch.randn(*input_shape), model.eval()
    with _threads(threads), torch.no_grad():
        times = seconds(alternate({"model": lambda: model(x)}, 1, repeats,
                                  before_block=lambda _: [model(x) for _ in range(warmup)])["model"])
    return {"median_ms": 1000.0 * statistics.median(times), "mean_ms": 1000.0 * statistics.fmean(times),
            "min_ms": 1000.0 * min(times)}


def interleaved_latency(models: dict[str, torch.nn.Module], shape: tuple[int, ...], threads: int,
                        repeats: int, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Per model: the lowest per-round median (ms) over `rounds` alternating rounds, and the overall min."""
    x = torch.randn(*shape)
    forwards = {name: (lambda m=model: m(x)) for name, model in models.items()}
    with _threads(threads), torch.no_grad():  # one untimed warm-up call before each block
        calls = alternate(forwards, rounds, max(1, repeats // rounds), before_block=lambda name: forwards[name]())
    return {name: {"median_ms": 1000.0 * best_round_median(c), "min_ms": 1000.0 * min(seconds(c))}
            for name, c in calls.items()}


def compare_fp32_int8(q: QuantizedCheckpoint, threads: int = 2, repeats: int = 12, max_images: int = 0) -> dict:
    """Side by side: latency at the network's input size of the first image, mIoU, agreement."""
    with _threads(threads):
        scores = score_pair(q.fp32, q.int8, q.eval_set, q.meta, q.eval_scale, max_images)
    h, w = q.eval_set[0]["image"].shape[-2:]
    shape = (1, 3, max(1, round(h * q.eval_scale)), max(1, round(w * q.eval_scale)))
    latency = interleaved_latency({"fp32": q.fp32.eval(), "int8": q.int8}, shape, threads, repeats)
    return {"input": list(shape), "threads": threads, "pixel_agreement": scores["pixel_agreement"],
            "num_images": scores["num_images"],
            **{name: {**latency[name], "miou": scores[name]["miou"], "pixel_accuracy": scores[name]["pixel_accuracy"]}
               for name in ("fp32", "int8")},
            "speedup": latency["fp32"]["median_ms"] / latency["int8"]["median_ms"],
            "miou_drop_points": 100.0 * (scores["fp32"]["miou"] - scores["int8"]["miou"])}


def quantize_and_compare(model: Path, data: Path, out: Path, calibration: int = 16, calibration_split: str | None = None,
                         eval_split: str | None = None, config: Path | None = None, backend: str = "x86",
                         threads: int = 2, repeats: int = 12, max_eval_images: int = 0,
                         torchscript: Path | None = None) -> dict:
    """seg2d.int8.quantize_checkpoint, then fp32 vs int8 side by side; the report (`brats-seg quantize`'s)."""
    q = quantize_checkpoint(model, data, out, calibration, calibration_split, eval_split, config, backend)
    report = {**q.report, **compare_fp32_int8(q, threads, repeats, max_eval_images)}
    if torchscript is not None:
        report["torchscript_file"] = str(save_torchscript(q.int8, q.example, Path(torchscript)))
    return report


def comparison_table(result: dict) -> str:
    """fp32 and int8 rows: latency, mIoU, pixel accuracy; speed-up, mIoU change and agreement below."""
    rows = [[name, *(f"{result[name][k]:.1f}" for k in ("median_ms", "min_ms")),
             *(f"{result[name][k]:.4f}" for k in ("miou", "pixel_accuracy"))] for name in ("fp32", "int8")]
    table = markdown_table(["model", "latency median (ms)", "latency min (ms)", "mIoU", "pixel accuracy"], rows,
                           align="lrrrr")
    return table + (f"\n\ninput {'x'.join(map(str, result['input']))}, {result['threads']} thread(s), "
                    f"{result['num_images']} image(s): int8 is {result['speedup']:.2f}x the speed of fp32, "
                    f"mIoU {-result['miou_drop_points']:+.2f} points, pixel agreement {result['pixel_agreement']:.4f}")


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to `n` inside, restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def bench_2d(out_dir: Path, model: Path | None = None, data: Path = DEFAULT_DATA, config: Path = DEFAULT_CONFIG,
             train_seconds: float = 300.0, calibration: int = 6, threads: int = 2, repeats: int = 12,
             split: str | None = None, overrides: Sequence[str] = ()) -> tuple[dict, str]:
    """(result dict, markdown table); writes out_dir/bench2d.json, out_dir/bench2d.md and out_dir/int8.pt.

    model: a trained 2D run or checkpoint; None trains one for `train_seconds` on `data`.
    split: the split calibrated on and scored (default: the run's validation split).
    """
    from brats_seg.core.atomic import atomic_write_json, atomic_write_text

    if not Path(data).exists():
        raise InputError(data, "benchmark data not found; expected a 2D dataset root (default: the CamVid samples)")
    out_dir = Path(out_dir)
    started = time.monotonic()
    trained = model is None
    if trained:
        model = train_quick_model(Path(data), out_dir, Path(config), train_seconds, overrides)
    train_s = time.monotonic() - started
    result = quantize_and_compare(Path(model), Path(data), out_dir / "int8.pt", calibration,
                                  calibration_split=split, eval_split=split, threads=threads, repeats=repeats)
    result.update(model=str(model), trained_here=trained, train_s=round(train_s, 1) if trained else None)
    table = comparison_table(result)
    header = f"### bench 2d: {Path(model).name} fp32 vs int8 ({result['backend']})\n\n"
    atomic_write_json(out_dir / "bench2d.json", result)
    atomic_write_text(out_dir / "bench2d.md", header + table + "\n")
    return result, header + table
