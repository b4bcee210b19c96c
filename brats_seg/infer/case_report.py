"""What predict reports per case beside the mask: tumour volumes, uncertainty scores, extra sections.

Each predicted case gets a JSON with the mask's stem (`BraTS-001.nii.gz` -> `BraTS-001.json`):
volumes in mL per BraTS region (WT, TC, ET, from io.labels.REGIONS) and per label (NCR, ED, ET),
from voxel counts times the voxel volume of the mask's own grid (the input's spacing); with
`--uncertainty`, a score per region; plus any extra sections a caller adds (`extra=`, e.g. a
co-registration record). A batch (`predict --manifest`) also gets volumes.csv, one row per case.

Uncertainty scores (the map is the TTA standard deviation of each region's probability, see
infer.sliding_window.sliding_window_spread): per region, `mean_in_region` is the mean map value
over the predicted region's voxels (null when the region is empty), and `uncertain_ml` the volume
where the map is at least UNCERTAIN_STD anywhere (it flags a region the passes almost predicted).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from brats_seg.core.atomic import atomic_write_json, atomic_write_text
from brats_seg.io.geometry import voxel_ml
from brats_seg.io.labels import CANONICAL_NAMES, REGIONS, region_masks

REPORT_VERSION = 1
UNCERTAIN_STD = 0.1  # a region's probability varies by at least 0.1 (std) between the passes
UNCERTAINTY_MEASURE = ("standard deviation of each region's probability over the mirrored TTA passes and "
                       "overlapping windows (Gaussian-weighted), on the input grid")
LABELS = {name: value for value, name in CANONICAL_NAMES.items() if value}  # NCR 1, ED 2, ET 3
CSV_COLUMNS = ("id", *(f"{r}_ml" for r in REGIONS), *(f"{n}_ml" for n in LABELS if n not in REGIONS))


def volumes(labels: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """{'voxels': per label, 'label_volumes_ml': per label, 'volumes_ml': per region} of a
    canonical label map on a grid of `spacing` mm."""
    counts = np.bincount(np.asarray(labels, dtype=np.uint8).ravel(), minlength=len(CANONICAL_NAMES))
    per_label = {name: int(counts[value]) for name, value in LABELS.items()}
    unit = voxel_ml(spacing)
    regions = {region: sum(int(counts[v]) for v in ids) for region, ids in REGIONS.items()}
    return {"voxel_ml": unit, "voxels": per_label,
            "label_volumes_ml": {n: _ml(c, unit) for n, c in per_label.items()},
            "volumes_ml": {r: _ml(c, unit) for r, c in regions.items()}}


def uncertainty_scores(std: np.ndarray, labels: np.ndarray, spacing: Sequence[float]) -> dict[str, dict]:
    """Per region (WT, TC, ET, the map's channels in that order): mean_in_region and uncertain_ml."""
    unit, out = voxel_ml(spacing), {}
    for channel, (region, inside) in zip(std, region_masks(labels).items()):
        mean = float(channel[inside].mean()) if inside.any() else None
        out[region] = {"mean_in_region": None if mean is None else round(mean, 6),
                       "uncertain_ml": _ml(int(np.count_nonzero(channel >= UNCERTAIN_STD)), unit)}
    return out


def case_report(case_id: str, labels: np.ndarray, spacing: Sequence[float], mask: str, convention: str,
                missing: Sequence[str] = (), std: np.ndarray | None = None, uncertainty_map: str | None = None,
                model: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The case JSON's content (paths relative to the JSON's folder)."""
    report = {"report_version": REPORT_VERSION, "id": case_id, "mask": mask, "label_convention": convention,
              "spacing_mm": [float(s) for s in spacing], **volumes(labels, spacing),
              "missing_channels": list(missing)}
    if model:
        report["model"] = {k: model[k] for k in ("checkpoint", "sha256") if k in model}
    if std is not None:
        report["uncertainty"] = {"map": uncertainty_map, "measure": UNCERTAINTY_MEASURE,
                                 "uncertain_std": UNCERTAIN_STD, "regions": uncertainty_scores(std, labels, spacing)}
    return report


def write_case_json(path: Path, report: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> Path:
    """Write `report` plus `extra` sections (e.g. {'registration': {...}}) atomically; an extra
    section may not replace a key of the report."""
    clash = sorted(set(extra or {}) & set(report))
    if clash:
        raise ValueError(f"extra case-report sections {clash} would replace the report's own keys")
    atomic_write_json(Path(path), {**report, **(extra or {})})
    return Path(path)


def entry_fields(report: Mapping[str, Any]) -> dict[str, Any]:
    """What a predictions-manifest entry carries of a report (volumes and uncertainty scores)."""
    out = {"volumes_ml": dict(report["volumes_ml"]), "label_volumes_ml": dict(report["label_volumes_ml"])}
    if "uncertainty" in report:
        out["uncertainty_mean"] = {r: s["mean_in_region"] for r, s in report["uncertainty"]["regions"].items()}
    return out


def volumes_csv(entries: Sequence[Mapping[str, Any]]) -> str:
    """volumes.csv of manifest entries, sorted by id: id, WT/TC/ET mL, NCR/ED mL (the ET label is the
    ET region), and per-region uncertainty means when any entry has them; empty cells for None."""
    rows = sorted(entries, key=lambda e: e["id"])
    scored = any("uncertainty_mean" in e for e in rows)
    columns = list(CSV_COLUMNS) + ([f"{r}_uncertainty" for r in REGIONS] if scored else [])
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for e in rows:
        vol, lab, unc = e.get("volumes_ml", {}), e.get("label_volumes_ml", {}), e.get("uncertainty_mean", {})
        cells = [e["id"], *(vol.get(r) for r in REGIONS), *(lab.get(n) for n in LABELS if n not in REGIONS)]
        cells += [unc.get(r) for r in REGIONS] if scored else []
        writer.writerow(["" if c is None else c for c in cells])
    return text.getvalue()


def write_volumes_csv(path: Path, entries: Sequence[Mapping[str, Any]]) -> Path:
    """volumes.csv of `entries`, atomically."""
    atomic_write_text(Path(path), volumes_csv(entries))
    return Path(path)


def _ml(count: int, unit: float) -> float:
    return round(count * unit, 6)
