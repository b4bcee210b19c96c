"""Split a raw manifest into train and held-out manifests by case (deterministic for a seed)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from brats_seg.errors import InputError
from brats_seg.io.manifest import load_manifest, save_manifest
from brats_seg.core.hashing import sha256_file
from brats_seg.core.paths import refuse_overwrite


def held_out_count(test: float, n_cases: int) -> int:
    """Cases to hold out: a fraction in (0, 1) of `n_cases`, or a whole count >= 1."""
    if not math.isfinite(test) or test <= 0 or (test >= 1 and test != int(test)):
        raise InputError("--test", f"got {test}; expected a fraction between 0 and 1 (0.25) or a whole "
                                   "number of cases >= 1 (4)")
    return int(round(test * n_cases)) if test < 1 else int(test)


def split_manifest(raw_path: Path, out_dir: Path, test: float, seed: int = 0) -> tuple[Path, Path]:
    """Write out_dir/raw_train.json and out_dir/raw_test.json; `test` is a count (>= 1) or a fraction."""
    raw_path, out_dir = Path(raw_path), Path(out_dir)
    if seed < 0:
        raise InputError("--seed", f"got {seed}; expected an integer >= 0")
    refuse_overwrite(out_dir, [raw_path], "--out", out_is_folder=True)
    raw = load_manifest(raw_path, stage="raw")
    ids = sorted(c["id"] for c in raw["cases"])
    n_test = held_out_count(test, len(ids))
    if not 1 <= n_test < len(ids):
        raise InputError(raw_path, f"cannot hold out {test} of {len(ids)} cases; expected at least one case on each side")
    held = set(np.random.default_rng(seed).permutation(ids)[:n_test].tolist())
    out_dir.mkdir(parents=True, exist_ok=True)
    roots = [os.path.relpath((raw_path.resolve().parent / r).resolve(), out_dir.resolve()) for r in raw["roots"]]
    paths = []
    for name, keep in (("raw_train.json", lambda c: c["id"] not in held), ("raw_test.json", lambda c: c["id"] in held)):
        part = {**raw, "roots": roots, "cases": [c for c in raw["cases"] if keep(c)],
                "input_manifest_sha256": sha256_file(raw_path), "split": {"test": n_test, "seed": seed}}
        save_manifest(out_dir / name, part)
        paths.append(out_dir / name)
    return paths[0], paths[1]
