"""`brats-seg bench {preprocess,train,infer,2d}`: speed measured side by side against a reference."""
from __future__ import annotations

import argparse
from pathlib import Path

SHARED_BRATS = Path("../shared/datasets/brats2018_deepbrainseg")


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    pre = sub.add_parser("preprocess", help="preprocess vs decode floor vs MONAI chain")
    pre.add_argument("--data", type=Path, default=SHARED_BRATS, help="BraTS case folders")
    pre.add_argument("--workers", type=int, default=2)
    pre.add_argument("--out", type=Path, default=Path("runs/bench/preprocess.json"))


def run(args: argparse.Namespace) -> int:
    import tempfile

    from brats_seg.errors import InputError
    from brats_seg.ingest import ingest

    if not Path(args.data).is_dir():
        raise InputError(args.data, "benchmark data folder not found; expected BraTS case folders (see --data)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.json"
        ingest([args.data], raw, workers=args.workers)
        if args.bench == "preprocess":
            from brats_seg.bench.preprocess import bench_preprocess

            bench_preprocess(raw, args.workers, args.out)
    return 0
