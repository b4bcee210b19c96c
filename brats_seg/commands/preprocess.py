"""`brats-seg preprocess raw.json --out DIR`: the resumable, shardable preprocessing batch job."""
from __future__ import annotations

import argparse
from pathlib import Path

from brats_seg.errors import InputError


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' with 0 <= I < N."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise InputError("--shard", f"{text!r} is not I/N; expected e.g. 0/4")
    if count < 1 or not 0 <= index < count:
        raise InputError("--shard", f"{text!r} is out of range; expected 0 <= I < N")
    return index, count


def parse_spacing(text: str):
    if text == "native":
        return "native"
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(0.05 <= v <= 50 for v in values):  # also rejects nan and inf
        raise InputError("--spacing", f"{text!r} is not valid; expected 'native', or one (2.0) or three (1,1,2) "
                                      "sizes in mm between 0.05 and 50")
    return tuple(values)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("raw", type=Path, help="raw manifest written by `brats-seg ingest`")
    p.add_argument("--out", required=True, type=Path, help="output folder (preprocessed.json and cases/)")
    p.add_argument("--spacing", default="native", help="'native' or target spacing in mm, e.g. 2.0 or 1,1,2")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: up to 4, one per core)")
    p.add_argument("--shard", default="0/1", help="process only shard I of N (cluster arrays), e.g. 3/16")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored image precision")
    p.add_argument("--force", action="store_true", help="redo every case even if its outputs are current")


def run(args: argparse.Namespace) -> int:
    from brats_seg.preprocess.case import PreprocessConfig
    from brats_seg.preprocess.stage import default_workers, run_preprocess

    cfg = PreprocessConfig(spacing=parse_spacing(args.spacing), dtype=args.dtype)
    summary = run_preprocess(args.raw, args.out, cfg, args.workers or default_workers(), parse_shard(args.shard), args.force)
    return 1 if summary["failed"] else 0
