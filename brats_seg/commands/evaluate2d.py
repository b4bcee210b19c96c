"""`brats-seg evaluate2d`: the 2D side's evaluate (arguments in brats_seg/seg2d/cli.py)."""
from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    from brats_seg.seg2d.cli import configure_evaluate

    configure_evaluate(p)


def run(args: argparse.Namespace) -> int:
    from brats_seg.seg2d.cli import run_evaluate

    return int(run_evaluate(args) or 0)
