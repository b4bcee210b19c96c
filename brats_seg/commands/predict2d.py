"""`brats-seg predict2d`: the 2D side's predict (arguments in brats_seg/seg2d/cli.py)."""
from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    from brats_seg.seg2d.cli import configure_predict

    configure_predict(p)


def run(args: argparse.Namespace) -> int:
    from brats_seg.seg2d.cli import run_predict

    return int(run_predict(args) or 0)
