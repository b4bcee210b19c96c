"""`brats-seg bench 2d`: fp32 vs int8 DeepLabV3+ on real images, latency and mIoU side by side.

Random weights would make the mIoU column meaningless, so the benchmark scores a trained model:
a given run/checkpoint, or (by default) DeepLabV3+ trained for a few CPU minutes on the six
CamVid sample images with pipelines/camvid_deeplabv3plus.yaml. It is then quantized (calibrated
on the same images) and both models are timed interleaved at the network's input size and
scored on the same images (twod.int8.compare_fp32_int8).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from brats_seg.errors import InputError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "pipelines" / "camvid_deeplabv3plus.yaml"
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


def bench_2d(out_dir: Path, model: Path | None = None, data: Path = DEFAULT_DATA, config: Path = DEFAULT_CONFIG,
             train_seconds: float = 300.0, calibration: int = 6, threads: int = 2, repeats: int = 12,
             split: str | None = None, overrides: Sequence[str] = ()) -> tuple[dict, str]:
    """(result dict, markdown table); writes out_dir/bench2d.json, out_dir/bench2d.md and out_dir/int8.pt.

    model: a trained 2D run or checkpoint; None trains one for `train_seconds` on `data`.
    split: the split calibrated on and scored (default: the run's validation split).
    """
    from brats_seg.core.atomic import atomic_write_json, atomic_write_text
    from brats_seg.seg2d.int8 import markdown_table, quantize_checkpoint

    if not Path(data).exists():
        raise InputError(data, "benchmark data not found; expected a 2D dataset root (default: the CamVid samples)")
    out_dir = Path(out_dir)
    started = time.monotonic()
    trained = model is None
    if trained:
        model = train_quick_model(Path(data), out_dir, Path(config), train_seconds, overrides)
    train_s = time.monotonic() - started
    result = quantize_checkpoint(Path(model), Path(data), out_dir / "int8.pt", calibration,
                                 calibration_split=split, eval_split=split, threads=threads, repeats=repeats)
    result.update(model=str(model), trained_here=trained, train_s=round(train_s, 1) if trained else None)
    table = markdown_table(result)
    header = f"### bench 2d: {Path(model).name} fp32 vs int8 ({result['backend']})\n\n"
    atomic_write_json(out_dir / "bench2d.json", result)
    atomic_write_text(out_dir / "bench2d.md", header + table + "\n")
    return result, header + table
