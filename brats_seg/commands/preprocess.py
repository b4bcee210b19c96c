"""`brats-seg preprocess raw.json --out DIR`: the resumable, shardable preprocessing batch job."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from brats_seg.errors import InputError
from brats_seg.io.geometry import VOXEL_SIZE_RANGE_MM
from brats_seg.preprocess.case import MAX_GRID_VOXELS


def parse_spacing(text: str) -> str | tuple[float, float, float]:
    """--spacing: 'native', one size for all axes (2.0) or three (1,1,2), in mm."""
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


def parse_spacing_range(text: str) -> tuple[float, float]:
    """--spacing-range LO,HI: the input voxel sizes (mm per axis) accepted, 0 < LO <= HI <= 1000."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        lo = hi = float("nan")
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi <= 1000):
        raise InputError("--spacing-range", f"{text!r} is not valid; expected LO,HI in mm with 0 < LO <= HI <= 1000 "
                                            f"(default {VOXEL_SIZE_RANGE_MM[0]:g},{VOXEL_SIZE_RANGE_MM[1]:g})")
    return lo, hi


def parse_max_voxels(value: int) -> int:
    """--max-voxels N: the most voxels per channel a resampled grid may have (at least 1)."""
    if value < 1:
        raise InputError("--max-voxels", f"{value} is not valid; expected a positive number of voxels "
                                         f"(default {MAX_GRID_VOXELS} = 512^3)")
    return value


def add_input_bounds(p: argparse.ArgumentParser) -> None:
    """The flags that widen what preprocess and predict accept (shared so both say the same)."""
    p.add_argument("--data-root", action="append", type=Path, default=[], metavar="DIR",
                   help="allow raw-manifest roots inside DIR (repeatable); without it a root must lie inside "
                        "the manifest's own folder")
    p.add_argument("--max-voxels", type=int, default=MAX_GRID_VOXELS,
                   help=f"most voxels per channel of a resampled grid (default {MAX_GRID_VOXELS} = 512^3)")
    p.add_argument("--spacing-range", default=f"{VOXEL_SIZE_RANGE_MM[0]:g},{VOXEL_SIZE_RANGE_MM[1]:g}",
                   help="input voxel sizes accepted, LO,HI mm per axis (default %(default)s)")


def add_register_options(p: argparse.ArgumentParser) -> None:
    """`--register` and its bounds (predict and ingest: the two places series become one case)."""
    g = p.add_argument_group("co-registration (preprocess.register)")
    g.add_argument("--register", action="store_true",
                   help="rigidly register t1, t2 and flair onto the t1ce (Mattes MI, multi-resolution) and use the "
                        "t1ce's grid; needed when the series lie on different grids")
    g.add_argument("--register-max-rotation", type=float, default=20.0, metavar="DEG",
                   help="refuse a registration that rotates more than this (default %(default)s degrees)")
    g.add_argument("--register-max-shift", type=float, default=30.0, metavar="MM",
                   help="refuse a registration that moves the t1ce's brain centre more than this (default %(default)s mm)")
    g.add_argument("--register-init", default="auto", choices=("auto", "moments", "geometry", "identity"),
                   help="start: trust the scanner's coordinates (identity), align intensity centres (moments) or "
                        "image centres (geometry); auto: the better of identity and moments (default)")
    g.add_argument("--register-interpolation", default="bspline", choices=("bspline", "linear"),
                   help="resampling onto the t1ce grid: cubic B-spline keeps intensity contrast (default), linear "
                        "blurs it")
    g.add_argument("--register-sampling", type=float, default=0.1, metavar="FRACTION",
                   help="fraction of the voxels the metric samples at full resolution (default %(default)s)")


def register_config(args: argparse.Namespace, threads: int | None = None):
    """The checked RegisterConfig of the flags, or None without --register."""
    if not args.register:
        for flag in REGISTER_DEFAULTS:
            if getattr(args, flag) != REGISTER_DEFAULTS[flag]:
                raise InputError("--" + flag.replace("_", "-"), "applies only with --register")
        return None
    from brats_seg.preprocess.register import RegisterConfig

    return RegisterConfig(max_rotation_deg=args.register_max_rotation, max_shift_mm=args.register_max_shift,
                          init=args.register_init, sampling=args.register_sampling, threads=threads,
                          interpolation=args.register_interpolation)


REGISTER_DEFAULTS = {"register_max_rotation": 20.0, "register_max_shift": 30.0, "register_init": "auto",
                     "register_sampling": 0.1, "register_interpolation": "bspline"}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("raw", type=Path, help="raw manifest written by `brats-seg ingest`")
    p.add_argument("--out", required=True, type=Path, help="output folder (preprocessed.json and cases/)")
    p.add_argument("--spacing", default="native", help="'native' or target spacing in mm, e.g. 2.0 or 1,1,2")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: up to 4, one per core)")
    p.add_argument("--shard", default="0/1", help="process only shard I of N (cluster arrays), e.g. 3/16")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored image precision")
    p.add_argument("--force", action="store_true", help="redo every case even if its outputs are current")
    add_input_bounds(p)


def run(args: argparse.Namespace) -> int:
    from brats_seg.core.shards import parse_shard
    from brats_seg.preprocess.case import PreprocessConfig
    from brats_seg.preprocess.stage import default_workers, run_preprocess

    if args.workers is not None and not 1 <= args.workers <= 256:
        raise InputError("--workers", f"got {args.workers}; expected an integer from 1 to 256")
    cfg = PreprocessConfig(spacing=parse_spacing(args.spacing), dtype=args.dtype,
                           max_voxels=parse_max_voxels(args.max_voxels),
                           spacing_range=parse_spacing_range(args.spacing_range))
    summary = run_preprocess(args.raw, args.out, cfg, args.workers or default_workers(), parse_shard(args.shard),
                             args.force, tuple(args.data_root))
    return 1 if summary["failed"] else 0
