"""`brats-seg demo [--out runs/demo] [--minutes M] [--data DIR]`: the whole pipeline, one command.

Without --data: synthetic phantoms (pipelines/runs/demo.yaml). With --data: real BraTS case folders
(pipelines/runs/demo_real.yaml). Ends with OUT/report.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

PIPELINES = Path(__file__).resolve().parents[2] / "pipelines" / "runs"
OVERHEAD_S = 90  # synth, ingest, preprocess, predict, evaluate and report on the demo phantoms


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=None, help="work folder (default runs/demo or runs/demo_real)")
    p.add_argument("--minutes", type=float, default=None, help="total time to aim for (training gets the rest)")
    p.add_argument("--data", type=Path, default=None, help="real BraTS case folders instead of phantoms")
    p.add_argument("--force", action="store_true", help="redo every stage")


def run(args: argparse.Namespace) -> int:
    from brats_seg.core.flags import check_minutes
    from brats_seg.errors import InputError
    from brats_seg.pipeline.runner import run_pipeline

    name = "demo_real.yaml" if args.data else "demo.yaml"
    path = PIPELINES / name
    if not path.is_file():
        raise InputError(path, "pipeline file not found; run the demo from a checkout of brats-seg")
    variables = {"data": str(Path(args.data).resolve())} if args.data else {}
    check_minutes(args.minutes)
    if args.minutes is not None:
        variables["train_budget_s"] = str(max(30, int(args.minutes * 60 - OVERHEAD_S)))
    run_pipeline(path, args.out, variables, args.force)
    workdir = args.out or Path("runs") / path.stem
    print(f"demo finished: {Path(workdir) / 'report.md'}")
    return 0
