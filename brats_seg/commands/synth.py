"""`brats-seg synth`: write synthetic BraTS-like phantoms (BraTS 2018 layout) for the demo and tests."""
from __future__ import annotations

import argparse
from pathlib import Path

from brats_seg.errors import InputError

MIN_SIDE = 16  # below this the brain is too small to hold a tumour with three sub-regions
MAX_SIDE = 512  # a phantom larger than this per axis needs GBs of memory and teaches nothing more


MAX_CASES = 10_000  # phantoms are for demos and tests; a typo of 1e9 would run for days with no output


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder to write case folders into")
    parser.add_argument("--cases", type=int, default=8, help="number of cases (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; case i uses (seed, i)")
    parser.add_argument("--shape", default="96,96,64", help="volume shape X,Y,Z (default 96,96,64)")


def parse_shape(text: str) -> tuple[int, int, int]:
    """'96,96,64' -> (96, 96, 64); anything else is an InputError naming --shape."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        raise InputError("--shape", f"got {text!r}; expected three positive integers like 96,96,64")
    if min(shape) < MIN_SIDE:
        raise InputError("--shape", f"got {text!r}; expected three positive integers like 96,96,64, "
                                    f"each at least {MIN_SIDE}")
    if max(shape) > MAX_SIDE:
        raise InputError("--shape", f"got {text!r}; expected each side at most {MAX_SIDE}")
    return shape  # type: ignore[return-value]


def run(args: argparse.Namespace) -> int:
    import time

    from brats_seg.synth.phantoms import synthesize_dataset

    shape = parse_shape(args.shape)
    if not 1 <= args.cases <= MAX_CASES:
        raise InputError("--cases", f"got {args.cases}; expected 1 to {MAX_CASES} cases")
    if args.seed < 0:
        raise InputError("--seed", f"got {args.seed}; expected a non-negative integer")
    existing = [f"Synth_{i:04d}" for i in range(args.cases) if (Path(args.out) / f"Synth_{i:04d}").exists()]
    if existing:  # phantoms of another seed or shape would replace a dataset something else may use
        raise InputError(args.out, f"already holds {existing[0]}" + (f" and {len(existing) - 1} more" if len(existing) > 1
                         else "") + "; synth writes only new case folders: choose a new --out or remove them")
    start = time.perf_counter()
    folders = synthesize_dataset(args.out, args.cases, args.seed, shape)
    elapsed = time.perf_counter() - start
    print(f"synth: wrote {len(folders)} cases of shape {'x'.join(map(str, shape))} "
          f"(seed {args.seed}) to {args.out} in {elapsed:.1f} s")
    return 0
