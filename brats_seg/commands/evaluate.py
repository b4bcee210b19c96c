"""`brats-seg evaluate --pred DIR --truth raw.json --out DIR`: Dice, HD95, volumes per case and region.

--lesion-wise adds the BraTS 2023 challenge's lesion-wise Dice and HD95 (brats_seg/evaluate/lesions.py),
with the dilation and lesion-size threshold of the chosen challenge task."""
from __future__ import annotations

import argparse
from pathlib import Path

from brats_seg.io.labels import CONVENTIONS


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, type=Path,
                   help="`brats-seg predict` output folder, its predictions.json, or a folder of <case>.nii.gz masks")
    p.add_argument("--truth", required=True, type=Path, help="raw manifest (brats-seg ingest) with the label maps")
    p.add_argument("--out", required=True, type=Path, help="folder for metrics.csv, summary.json, boxplot.png")
    p.add_argument("--pred-convention", choices=CONVENTIONS,
                   help="labels of masks without a predictions.json (default: the truth's convention); "
                        "brats2024: BraTS 2024 post-treatment, 4 = resection cavity (scored as region RC)")
    p.add_argument("--data-root", action="append", type=Path, default=[], metavar="DIR",
                   help="allow the truth manifest's roots inside DIR (repeatable); without it a root must lie "
                        "inside the manifest's own folder")
    lesion = p.add_argument_group("lesion-wise scores (BraTS 2023)")
    lesion.add_argument("--lesion-wise", action="store_true",
                        help="also score lesion-wise Dice and HD95 per region, as the BraTS 2023 challenge ranks")
    lesion.add_argument("--lesion-challenge", default="gli", metavar="TASK",
                        help="BraTS 2023 task whose parameters apply: gli, ssa, ped dilate 3 voxels and ignore "
                             "truth lesions of <= 50 mm3; men 1 and 50; met 1 and 2 (default: gli)")
    lesion.add_argument("--lesion-dilation", type=int, default=None, metavar="N",
                        help="voxels of dilation that match predictions to a lesion (default: the task's)")
    lesion.add_argument("--lesion-min-mm3", type=float, default=None, metavar="MM3",
                        help="truth lesions of at most this volume are left out (default: the task's)")


def run(args: argparse.Namespace) -> int:
    from brats_seg.errors import InputError
    from brats_seg.evaluate.lesions import lesion_config
    from brats_seg.evaluate.stage import evaluate, format_table

    tuned = args.lesion_dilation is not None or args.lesion_min_mm3 is not None or args.lesion_challenge != "gli"
    if tuned and not args.lesion_wise:
        raise InputError("--lesion-challenge/--lesion-dilation/--lesion-min-mm3", "given without --lesion-wise; "
                                                                                 "expected --lesion-wise with them")
    lesion = lesion_config(args.lesion_challenge, args.lesion_dilation, args.lesion_min_mm3) if args.lesion_wise else None
    summary = evaluate(args.pred, args.truth, args.out, args.pred_convention, tuple(args.data_root), lesion)
    print(format_table(summary))
    print(f"mean Dice over regions {summary['mean_dice']:.4f} ({len(summary['cases'])} cases) -> {args.out}")
    if lesion is not None:
        print(f"mean lesion-wise Dice over regions {summary['lesion_wise']['mean_dice']:.4f}")
    return 0
