"""`brats-seg doctor [--run DIR]`: versions, threads, devices, and checks of an install or run folder,
to paste into a bug report."""
from __future__ import annotations

import argparse
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, default=None, help="a training run folder (or checkpoint) to check")


def run(args: argparse.Namespace) -> int:
    from brats_seg.doctor import check_install, check_run, environment

    lines = environment()
    problems = check_install(lines)
    if args.run is not None:
        problems += check_run(args.run, lines)
    for key, value in lines:
        print(f"{key:>22}: {value}")
    for problem in problems:
        print(f"problem: {problem}")
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 0 if not problems else 1
