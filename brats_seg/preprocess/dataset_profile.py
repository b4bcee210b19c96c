"""Dataset profile (what nnU-Net calls the dataset fingerprint): geometry, intensity and class statistics.

Stored under the manifest key "fingerprint". Computed from the per-case manifest entries only, so a
sharded run merged afterwards gets the same profile as a single run.
"""
from __future__ import annotations

import numpy as np


def _summary(values: list[list[float]] | list[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    return {"median": np.median(arr, axis=0).tolist(), "min": arr.min(axis=0).tolist(), "max": arr.max(axis=0).tolist()}


def dataset_profile(entries: list[dict]) -> dict:
    """Spacing/shape distributions, per-channel intensity medians and class frequencies of `entries`."""
    if not entries:
        return {"cases": 0}
    geoms = [e["source"]["geometry"] for e in entries]
    result = {
        "cases": len(entries),
        "original_spacing": _summary([g["spacing"] for g in geoms]),
        "original_shape": _summary([g["shape"] for g in geoms]),
        "cropped_shape": _summary([e["source"]["cropped_shape"] for e in entries]),
        "preprocessed_shape": _summary([e["shape"] for e in entries]),
        "orientations": sorted({g["orientation"] for g in geoms}),
        "intensity": _intensity(entries),
    }
    labelled = [e for e in entries if e.get("class_voxels")]
    if labelled:
        totals = np.sum([[e["class_voxels"][str(c)] for c in range(4)] for e in labelled], axis=0)
        result["class_frequency"] = {str(c): float(totals[c] / max(totals.sum(), 1)) for c in range(4)}
        result["cases_with_class"] = {str(c): sum(e["class_voxels"][str(c)] > 0 for e in labelled) for c in range(1, 4)}
    return result


def _intensity(entries: list[dict]) -> dict:
    out = {}
    for channel in entries[0]["channels"]:
        stats = [e["norm"][channel] for e in entries if channel in e["norm"]]
        out[channel] = {key: float(np.median([s[key] for s in stats])) for key in ("mean", "std", "p00_5", "p99_5")}
    return out
