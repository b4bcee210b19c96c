"""`brats-seg report --eval DIR --out DIR [--pred DIR] [--run DIR]`: a Markdown study report."""
from __future__ import annotations

import argparse
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval", type=Path, required=True, help="folder written by `brats-seg evaluate`")
    p.add_argument("--out", type=Path, required=True, help="folder for report.md and figures/")
    p.add_argument("--pred", type=Path, default=None, help="prediction folder (QA pictures)")
    p.add_argument("--run", type=Path, default=None, help="training run folder (curves, best metrics)")
    p.add_argument("--title", default="brats-seg study")


def run(args: argparse.Namespace) -> int:
    from brats_seg.evaluate.report import write_report

    print(f"report -> {write_report(args.eval, args.out, args.pred, args.run, args.title)}")
    return 0
