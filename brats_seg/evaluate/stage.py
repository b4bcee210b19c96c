"""Evaluation stage: predicted masks against the truth of a raw manifest, per case and BraTS region.

Outputs in OUT: metrics.csv (one row per case and region: Dice, HD95 mm, sensitivity,
specificity, predicted and true volume in mL), summary.json (mean / median / std per region and
metric, plus the cases missing a prediction or a truth) and boxplot.png. Empty-region conventions
follow BraTS; see brats_seg/evaluate/metrics.py. With a LesionWiseConfig (--lesion-wise) every row
and region also carries the BraTS 2023 lesion-wise Dice and HD95 and the lesion counts
(brats_seg/evaluate/lesions.py). A convention with labels outside the tumour regions (BraTS 2024's
resection cavity, 4) adds that region (RC) for the cases whose truth or prediction can hold it.

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
from brats_seg.evaluate.lesions import LESION_HD95_PENALTY_MM, LESION_METRICS, LesionWiseConfig, lesion_wise
from brats_seg.evaluate.metrics import HD95_EMPTY_MM, METRICS, binary_metrics, summarise
from brats_seg.io.content import label_values, read_label_record, record_paths
from brats_seg.io.labels import (CONVENTIONS, extra_region_mask, extra_region_names, region_masks,
                                 to_canonical)
from brats_seg.io.geometry import same_grid
from brats_seg.io.volume import read_volume, read_volume_verified
from brats_seg.core.atomic import atomic_path, atomic_write_json
from brats_seg.core.paths import refuse_overwrite
from brats_seg.io.manifest import load_manifest, case_root, resolve_inside
from brats_seg.io.labels import REGION_NAMES

CSV_FIELDS = ("case", "region", *METRICS)


def row_metrics(lesion: LesionWiseConfig | None) -> tuple[str, ...]:
    """The metric columns of a row: the voxel-wise ones, then the lesion-wise ones when asked for."""
    return METRICS + (LESION_METRICS if lesion is not None else ())


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
             data_roots: Sequence[Path] = (), lesion: LesionWiseConfig | None = None) -> dict:
    """Score every case that has both a prediction and a truth; write CSV, summary and box plot.

    data_roots: folders outside the raw manifest's own folder its roots may lie in (--data-root);
    lesion: also score lesion-wise (BraTS 2023). Refused before anything is read or written: an
    `out_dir` that is, or directly holds, an input."""
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
            rows += case_rows(case, roots[case["id"]], preds[case["id"]], pred_convention, lesion)
    if not rows:
        raise InputError(pred, f"no prediction matches a labelled case of {truth}; expected masks named by case id")
    extra = sorted(set(preds) - {c["id"] for c in raw["cases"]})
    for case_id in missing:
        print(f"warning: {case_id}: no prediction; left out of the scores", file=sys.stderr)
    summary = summary_dict(rows, missing, unlabelled, extra, pred, truth, lesion)
    write_outputs(Path(out_dir), rows, summary, row_metrics(lesion))
    return summary


def case_rows(case: dict, root: Path, mask: PredictedMask, pred_convention: str | None,
              lesion: LesionWiseConfig | None = None) -> list[dict]:
    """One row per region for one case (WT, TC, ET, then RC where a convention holds it)."""
    # the truth is held to ingest's label rules again (a file swapped in with its own sha256 included);
    # no voxel-size bound: scoring never resamples, and the prediction must lie on this grid anyway
    truth_convention = case["label_convention"]
    _, ref_raw, ref_geom = read_label_record(root, case["seg"], truth_convention, case["id"],
                                             spacing_range=None, links=case.get("links"))
    pred_raw, pred_geom = read_volume_verified(mask.path, mask.sha256) if mask.sha256 else read_volume(mask.path)
    if (problem := same_grid(ref_geom, pred_geom)) is not None:
        raise InputError(mask.path, f"{problem} of the truth; expected the prediction on the truth's grid")
    convention = mask.convention or pred_convention or truth_convention
    values = sorted(label_values(mask.path, pred_raw))  # NaN, Inf or 1.5 is one line, not a traceback
    try:
        pairs = region_pairs(pred_raw, convention, ref_raw, truth_convention)
    except ValueError:  # the truth was checked on reading: the prediction's values are outside its convention
        raise InputError(mask.path, f"label values {values} are outside the {convention} convention; "
                                    f"pass --pred-convention {'|'.join(CONVENTIONS)}") from None
    rows = []
    for region, (p, r) in pairs.items():
        row = {"case": case["id"], "region": region, **binary_metrics(p, r, ref_geom.spacing)}
        if lesion is not None:
            row.update(lesion_wise(p, r, ref_geom.spacing, lesion))
        rows.append(row)
    return rows


def region_pairs(pred_raw: np.ndarray, pred_convention: str, ref_raw: np.ndarray,
                 ref_convention: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(prediction, truth) boolean masks per region from disk labels: WT, TC, ET, then the regions
    either convention adds (BraTS 2024: RC; all False on the side whose convention lacks it)."""
    p = region_masks(to_canonical(pred_raw, pred_convention))
    r = region_masks(to_canonical(ref_raw, ref_convention))
    pairs = {name: (p[name], r[name]) for name in REGION_NAMES}
    for name in extra_region_names(ref_convention, pred_convention):
        pairs[name] = (extra_region_mask(pred_raw, pred_convention, name),
                       extra_region_mask(ref_raw, ref_convention, name))
    return pairs


def summary_dict(rows: list[dict], missing: list[str], unlabelled: list[str], extra: list[str],
                 pred: Path, truth: Path, lesion: LesionWiseConfig | None = None) -> dict:
    names = list(dict.fromkeys(r["region"] for r in rows))  # WT, TC, ET, then RC where present
    regions = {region: {metric: summarise([r[metric] for r in rows if r["region"] == region])
                        for metric in row_metrics(lesion)} for region in names}
    summary = {
        "predictions": str(Path(pred).resolve()), "truth": str(Path(truth).resolve()),
        "cases": sorted({r["case"] for r in rows}), "regions": regions,
        "mean_dice": float(np.mean([regions[r]["dice"]["mean"] for r in REGION_NAMES])),
        "missing_predictions": missing, "unlabelled_cases": unlabelled, "predictions_without_truth": extra,
        "conventions": {"both_empty": {"dice": 1.0, "hd95_mm": 0.0},
                        "one_empty": {"dice": 0.0, "hd95_mm": HD95_EMPTY_MM},
                        "sensitivity_when_truth_empty": 1.0},
    }
    if lesion is not None:
        summary["lesion_wise"] = {
            "method": "BraTS 2023 lesion-wise (rachitsaluja/BraTS-2023-Metrics)", "connectivity": 26,
            "dilation_voxels": lesion.dilation, "dilation_structure": "18-connected 3x3x3 cross",
            "min_volume_mm3": lesion.min_volume_mm3, "hd95_penalty_mm": LESION_HD95_PENALTY_MM,
            "both_empty": {"dice": 1.0, "hd95_mm": 0.0},
            "mean_dice": float(np.mean([regions[r]["lesion_dice"]["mean"] for r in REGION_NAMES])),
        }
    return summary


def write_outputs(out_dir: Path, rows: list[dict], summary: dict, metrics: Sequence[str] = METRICS) -> None:
    from brats_seg.evaluate.plots import write_boxplot

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=("case", "region", *metrics))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_json(out_dir / "summary.json", summary)
    write_boxplot(rows, out_dir / "boxplot.png")


def format_table(summary: dict) -> str:
    """A Markdown table of mean ± std per region (for reports and the CLI); lesion-wise columns when scored."""
    shown = ["dice", "hd95_mm", "sensitivity", "specificity"]
    header = "| region | Dice | HD95 (mm) | sensitivity | specificity |"
    if any("lesion_dice" in metrics for metrics in summary["regions"].values()):
        shown += ["lesion_dice", "lesion_hd95_mm"]
        header += " lesion-wise Dice | lesion-wise HD95 (mm) |"
    lines = [header, "|" + " --- |" * (len(shown) + 1)]
    for region, metrics in summary["regions"].items():
        cells = [" ± ".join("n/a" if metrics.get(m, {}).get(k) is None else f"{metrics[m][k]:.3f}"
                            for k in ("mean", "std")) for m in shown]
        lines.append(f"| {region} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_summary(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "summary.json").read_text())
