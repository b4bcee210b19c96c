"""`brats-seg split raw.json --out DIR --test N [--seed S]`: train / held-out raw manifests by case."""
from __future__ import annotations

import argparse
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("raw", type=Path, help="raw manifest to split")
    p.add_argument("--out", type=Path, required=True, help="folder for raw_train.json and raw_test.json")
    p.add_argument("--test", type=float, default=0.25, help="held-out cases: a count (4) or a fraction (0.25)")
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from brats_seg.ingest.split import split_manifest

    train, test = split_manifest(args.raw, args.out, args.test, args.seed)
    print(f"split -> {train}, {test}")
    return 0
