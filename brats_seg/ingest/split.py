"""Split a raw manifest into train and held-out manifests by case (deterministic for a seed)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from brats_seg.errors import InputError
from brats_seg.io.manifest import load_manifest, save_manifest
from brats_seg.core.hashing import sha256_file


def split_manifest(raw_path: Path, out_dir: Path, test: float, seed: int = 0) -> tuple[Path, Path]:
    """Write out_dir/raw_train.json and out_dir/raw_test.json; `test` is a count (>= 1) or a fraction."""
    raw_path, out_dir = Path(raw_path), Path(out_dir)
    raw = load_manifest(raw_path, stage="raw")
    ids = sorted(c["id"] for c in raw["cases"])
    n_test = int(round(test * len(ids))) if 0 < test < 1 else int(test)
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
