"""`brats-seg ingest SRC... --out raw.json`: discover and validate cases, write the raw manifest.

Flags are parsed here, once, into typed values; a bad one is one error line naming the flag.
"""
from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from brats_seg.errors import InputError
from brats_seg.io.geometry import VOXEL_SIZE_RANGE_MM

CHANNEL_NAME = re.compile(r"[a-z0-9][a-z0-9_]{0,31}")
MAX_WORKERS = 256


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", type=Path, metavar="SRC", help="dataset or case folders")
    p.add_argument("--out", required=True, type=Path, help="raw manifest to write (JSON; never one of the inputs)")
    p.add_argument("--layout", default="auto", choices=["auto", "brats2021", "brats2023", "msd", "nnunet"])
    p.add_argument("--labels", default="auto", choices=["auto", "brats2021", "brats2023", "brats2024", "msd"],
                   help="label convention on disk (auto: from the layout and the values found)")
    p.add_argument("--channels", default="t1,t1ce,t2,flair", help="comma-separated channel list, in pipeline order")
    p.add_argument("--skip-invalid", action="store_true", help="list bad cases under 'rejected' and go on")
    p.add_argument("--workers", default="1", help="parallel processes for reading and checking")
    lo, hi = VOXEL_SIZE_RANGE_MM
    p.add_argument("--spacing-range", default=f"{lo:g},{hi:g}", metavar="LO,HI",
                   help=f"accepted voxel sizes in mm per axis (default {lo:g},{hi:g}); files outside are refused")
    from brats_seg.commands.preprocess import add_register_options

    add_register_options(p)  # registered cases are written to <out stem>_registered/ (ingest.register_cases)


def parse_channels(text: str) -> tuple[str, ...]:
    """--channels as distinct lower-case names, at least one."""
    names = [c.strip().lower() for c in text.split(",")]
    if not text.strip() or any(not CHANNEL_NAME.fullmatch(n) for n in names):
        raise InputError("--channels", f"{text!r} is not a list of channel names; expected comma-separated names "
                                       "of letters and digits, such as t1,t1ce,t2,flair")
    if len(set(names)) != len(names):
        raise InputError("--channels", f"{text!r} names a channel twice; expected distinct channels")
    return tuple(names)


def parse_spacing_range(text: str) -> tuple[float, float]:
    """--spacing-range LO,HI in mm: finite, 0 < LO < HI."""
    parts = text.split(",")
    try:
        lo, hi = (float(v) for v in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise InputError("--spacing-range", f"{text!r} is not a range of voxel sizes; expected LO,HI in mm with "
                                            "0 < LO < HI, such as 0.05,20")
    return lo, hi


def parse_workers(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise InputError("--workers", f"{text!r} is not a number of processes; expected an integer from 1 to "
                                      f"{MAX_WORKERS}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    import os

    from brats_seg.commands.preprocess import register_config
    from brats_seg.ingest.stage import ingest

    channels, spacing = parse_channels(args.channels), parse_spacing_range(args.spacing_range)
    workers = parse_workers(args.workers)
    register = register_config(args, threads=max(1, (os.cpu_count() or 1) // workers))
    manifest = ingest(args.sources, args.out, args.layout, args.labels, channels, args.skip_invalid, workers, spacing,
                      register)
    print(f"ingested {len(manifest['cases'])} case(s), rejected {len(manifest['rejected'])} -> {args.out}")
    return 0
