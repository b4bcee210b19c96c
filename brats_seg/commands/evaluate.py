"""`brats-seg evaluate --pred DIR --truth raw.json --out DIR`: Dice, HD95, volumes per case and region."""
from __future__ import annotations

import argparse
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, type=Path,
                   help="`brats-seg predict` output folder, its predictions.json, or a folder of <case>.nii.gz masks")
    p.add_argument("--truth", required=True, type=Path, help="raw manifest (brats-seg ingest) with the label maps")
    p.add_argument("--out", required=True, type=Path, help="folder for metrics.csv, summary.json, boxplot.png")
    p.add_argument("--pred-convention", choices=("brats2021", "brats2023", "msd"),
                   help="labels of masks without a predictions.json (default: the truth's convention)")
    p.add_argument("--data-root", action="append", type=Path, default=[], metavar="DIR",
                   help="allow the truth manifest's roots inside DIR (repeatable); without it a root must lie "
                        "inside the manifest's own folder")


def run(args: argparse.Namespace) -> int:
    from brats_seg.evaluate.stage import evaluate, format_table

    summary = evaluate(args.pred, args.truth, args.out, args.pred_convention, tuple(args.data_root))
    print(format_table(summary))
    print(f"mean Dice over regions {summary['mean_dice']:.4f} ({len(summary['cases'])} cases) -> {args.out}")
    return 0
