"""`brats-seg merge DIR`: combine shard manifests into the manifest a single run would write."""
from __future__ import annotations

import argparse
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="preprocessing output folder holding shards/")


def run(args: argparse.Namespace) -> int:
    from brats_seg.preprocess.manifests import PREPROCESSED

    print(f"merged -> {PREPROCESSED.merge(args.folder)}")
    return 0
