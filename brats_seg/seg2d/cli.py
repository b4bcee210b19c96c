"""argparse front-ends of 2D prediction and evaluation (hooked up as `brats-seg predict2d` and
`brats-seg evaluate2d`). Light imports only: torch loads inside run_*.

    brats-seg predict2d --model RUN_DIR --images FOLDER_OR_FILES... --out OUT_DIR
    brats-seg evaluate2d --model RUN_DIR --data ROOT [--config YAML] [--split val] --out OUT_DIR
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="2D training run folder or checkpoint (.pt)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the network runs")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def _setup_torch(args: argparse.Namespace) -> None:
    import torch

    from brats_seg.core.flags import check_count
    from brats_seg.errors import InputError

    if args.threads is not None:
        check_count(args.threads, "--threads")
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "cuda was requested but torch sees no CUDA device")


def configure_predict(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--images", required=True, nargs="+", type=Path, help="image files and/or folders of images")
    p.add_argument("--out", required=True, type=Path, help="output folder: STEM.png (palette) + STEM_overlay.png")
    p.add_argument("--eval-scale", type=float, default=None, help="network input scale (default: the run's)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours (0..1)")


def run_predict(args: argparse.Namespace) -> int:
    from brats_seg.errors import InputError
    from brats_seg.seg2d.predict import predict_2d

    _setup_torch(args)
    if not 0.0 <= args.alpha <= 1.0:
        raise InputError("--alpha", f"got {args.alpha}; expected an opacity in [0, 1]")
    if args.eval_scale is not None and not (math.isfinite(args.eval_scale) and 0 < args.eval_scale <= 8):
        raise InputError("--eval-scale", f"got {args.eval_scale}; expected a resize factor in (0, 8]")
    rows = predict_2d(args.model, args.images, args.out, args.device, args.eval_scale, args.alpha)
    print(f"wrote {len(rows)} palette mask(s) and overlay(s) to {args.out}")
    return 0


def configure_evaluate(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--data", required=True, type=Path, help="dataset root folder")
    p.add_argument("--config", type=Path, default=None,
                   help="2D YAML whose data section describes --data (default: the run's own)")
    p.add_argument("--split", default=None, help="split to score (default: the config's data.val_split)")
    p.add_argument("--out", required=True, type=Path, help="folder for metrics.json, per_class_iou.csv, per_image.csv")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="data overrides, e.g. data.eval_scale=0.5")


def run_evaluate(args: argparse.Namespace) -> int:
    from brats_seg.seg2d.evaluate import evaluate_2d, summary_line

    _setup_torch(args)
    report = evaluate_2d(args.model, args.data, args.config, args.out, args.split, args.device, args.overrides)
    print(summary_line(report))
    print(f"wrote {args.out}/metrics.json, per_class_iou.csv, per_image.csv")
    return 0
