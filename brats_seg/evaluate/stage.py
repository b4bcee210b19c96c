"""Evaluation stage: predicted masks against the truth of a raw manifest, per case and BraTS region.

Outputs in OUT: metrics.csv (one row per case and region: Dice, HD95 mm, sensitivity,
specificity, predicted and true volume in mL), summary.json (mean / median / std per region and
metric, plus the cases missing a prediction or a truth) and boxplot.png. Empty-region conventions
follow BraTS; see brats_seg/evaluate/metrics.py.

Predictions are read from a predictions.json (its per-case label convention and sha256 are used
and checked) or from a folder of <case id>.nii.gz masks (convention: --pred-convention, else the
truth's). Every prediction must lie on its truth's grid.
"""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from brats_seg.errors import InputError
from brats_seg.evaluate.metrics import HD95_EMPTY_MM, METRICS, region_metrics, summarise
from brats_seg.io.content import read_label_record, record_paths
from brats_seg.io.labels import to_canonical
from brats_seg.io.geometry import same_grid
from brats_seg.io.volume import read_volume, read_volume_verified
from brats_seg.core.atomic import atomic_path, atomic_write_json
from brats_seg.core.paths import refuse_overwrite
from brats_seg.io.manifest import load_manifest, case_root, resolve_inside
from brats_seg.io.labels import REGION_NAMES

CSV_FIELDS = ("case", "region", *METRICS)


@dataclass(frozen=True)
class PredictedMask:
    path: Path
    convention: str | None
    sha256: str | None


def find_predictions(pred: Path) -> dict[str, PredictedMask]:
    """case id -> mask, from a predictions.json, a folder holding one, or a folder of masks."""
    pred = Path(pred)
    manifest_path = pred / "predictions.json" if pred.is_dir() else pred
    if manifest_path.is_file():
        manifest = load_manifest(manifest_path, stage="predictions")
        root = manifest_path.resolve().parent
        return {e["id"]: PredictedMask(resolve_inside(root, e["mask"], e["id"]), e.get("label_convention"), e["sha256"])
                for e in manifest["cases"]}
    if not pred.is_dir():
        raise InputError(pred, "not found; expected a predictions folder or predictions.json")
    folder = pred / "masks" if (pred / "masks").is_dir() else pred
    found = {}
    for path in sorted(folder.iterdir()):
        for suffix in (".nii.gz", ".nii"):
            if path.name.endswith(suffix) and not path.name.startswith("."):
                found[path.name[: -len(suffix)]] = PredictedMask(path, None, None)
    if not found:
        raise InputError(pred, "holds no predictions.json and no .nii/.nii.gz masks; expected `brats-seg predict` output")
    return found


def evaluate(pred: Path, truth: Path, out_dir: Path, pred_convention: str | None = None,
             data_roots: Sequence[Path] = ()) -> dict:
    """Score every case that has both a prediction and a truth; write CSV, summary and box plot.

    data_roots: folders outside the raw manifest's own folder its roots may lie in (--data-root).
    Refused before anything is read or written: an `out_dir` that is, or directly holds, an input."""
    preds = find_predictions(pred)
    raw = load_manifest(truth, stage="raw")
    roots = {c["id"]: case_root(truth, raw, c, data_roots) for c in raw["cases"]}
    inputs = [pred, truth, *set(roots.values()), *(m.path for m in preds.values()),
              *(p for c in raw["cases"] for p in record_paths(c, roots[c["id"]]))]
    refuse_overwrite(out_dir, inputs, "--out", out_is_folder=True)
    rows, missing, unlabelled = [], [], []
    for case in sorted(raw["cases"], key=lambda c: c["id"]):
        if not case.get("seg"):
            unlabelled.append(case["id"])
        elif case["id"] not in preds:
            missing.append(case["id"])
        else:
            rows += case_rows(case, roots[case["id"]], preds[case["id"]], pred_convention)
    if not rows:
        raise InputError(pred, f"no prediction matches a labelled case of {truth}; expected masks named by case id")
    extra = sorted(set(preds) - {c["id"] for c in raw["cases"]})
    for case_id in missing:
        print(f"warning: {case_id}: no prediction; left out of the scores", file=sys.stderr)
    summary = summary_dict(rows, missing, unlabelled, extra, pred, truth)
    write_outputs(Path(out_dir), rows, summary)
    return summary


def case_rows(case: dict, root: Path, mask: PredictedMask, pred_convention: str | None) -> list[dict]:
    """One row per region for one case."""
    # the truth is held to ingest's label rules again (a file swapped in with its own sha256 included);
    # no voxel-size bound: scoring never resamples, and the prediction must lie on this grid anyway
    _, ref_raw, ref_geom = read_label_record(root, case["seg"], case["label_convention"], case["id"],
                                             spacing_range=None, links=case.get("links"))
    ref = to_canonical(ref_raw, case["label_convention"])
    pred_raw, pred_geom = read_volume_verified(mask.path, mask.sha256) if mask.sha256 else read_volume(mask.path)
    if (problem := same_grid(ref_geom, pred_geom)) is not None:
        raise InputError(mask.path, f"{problem} of the truth; expected the prediction on the truth's grid")
    convention = mask.convention or pred_convention or case["label_convention"]
    try:
        labels = to_canonical(pred_raw, convention)
    except ValueError:
        values = sorted(int(v) for v in np.unique(pred_raw))
        raise InputError(mask.path, f"label values {values} are outside the {convention} convention; "
                                    "pass --pred-convention brats2021|brats2023|msd")
    scores = region_metrics(labels, ref, ref_geom.spacing)
    return [{"case": case["id"], "region": region, **scores[region]} for region in REGION_NAMES]


def summary_dict(rows: list[dict], missing: list[str], unlabelled: list[str], extra: list[str],
                 pred: Path, truth: Path) -> dict:
    regions = {region: {metric: summarise([r[metric] for r in rows if r["region"] == region]) for metric in METRICS}
               for region in REGION_NAMES}
    return {
        "predictions": str(Path(pred).resolve()), "truth": str(Path(truth).resolve()),
        "cases": sorted({r["case"] for r in rows}), "regions": regions,
        "mean_dice": float(np.mean([regions[r]["dice"]["mean"] for r in REGION_NAMES])),
        "missing_predictions": missing, "unlabelled_cases": unlabelled, "predictions_without_truth": extra,
        "conventions": {"both_empty": {"dice": 1.0, "hd95_mm": 0.0},
                        "one_empty": {"dice": 0.0, "hd95_mm": HD95_EMPTY_MM},
                        "sensitivity_when_truth_empty": 1.0},
    }


def write_outputs(out_dir: Path, rows: list[dict], summary: dict) -> None:
    from brats_seg.evaluate.plots import write_boxplot

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_json(out_dir / "summary.json", summary)
    write_boxplot(rows, out_dir / "boxplot.png")


def format_table(summary: dict) -> str:
    """A Markdown table of mean ± std per region (for reports and the CLI)."""
    lines = ["| region | Dice | HD95 (mm) | sensitivity | specificity |", "| --- | --- | --- | --- | --- |"]
    for region, metrics in summary["regions"].items():
        cells = [" ± ".join("n/a" if metrics[m][k] is None else f"{metrics[m][k]:.3f}" for k in ("mean", "std"))
                 for m in ("dice", "hd95_mm", "sensitivity", "specificity")]
        lines.append(f"| {region} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_summary(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "summary.json").read_text())
