"""What `bench learn` reports: per-case scores gathered from each fold's `brats-seg evaluate`
output (metrics.csv), means over every held-out case, and the Markdown tables it prints.

Means are over the K x held-out cases pooled (each case once), not means of fold means, so a
fold with more cases weighs more, as each case does. HD95 of an empty-vs-non-empty region counts
with BraTS's 373.13 mm penalty (brats_seg/evaluate/metrics.py), as `brats-seg evaluate` reports it.
"""
from __future__ import annotations

import csv
from pathlib import Path

from brats_seg.bench.learn_components import component_study, component_table_md
from brats_seg.bench.learn_threshold import study
from brats_seg.evaluate.metrics import summarise
from brats_seg.io.labels import REGION_NAMES

KEPT = ("dice", "hd95_mm", "volume_pred_ml", "volume_truth_ml")
LEARN_KIND = "brats-seg bench learn"


def read_case_rows(eval_dir: Path, fold: int) -> dict[str, dict]:
    """case id -> {'fold': I, 'WT': {dice, hd95_mm, ...}, 'TC': ..., 'ET': ...} from metrics.csv."""
    cases: dict[str, dict] = {}
    with open(Path(eval_dir) / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            entry = cases.setdefault(row["case"], {"fold": fold})
            entry[row["region"]] = {k: float(row[k]) for k in KEPT}
    return cases


def region_means(cases: dict[str, dict]) -> dict[str, dict]:
    """Per region: mean/median/std/min/max/n of Dice and HD95 over the cases."""
    return {region: {metric: summarise([c[region][metric] for c in cases.values()]) for metric in ("dice", "hd95_mm")}
            for region in REGION_NAMES}


def assemble_report(meta: dict, records: list[dict], merged: dict[str, dict], variant_args: dict[str, list]) -> dict:
    """The report of the folds in `records`: per predict variant the means, per-case scores and the
    ET threshold and component studies over exactly their held-out cases. merged: variant ->
    {cases, thresholds, components}, each case id -> its scores (what run_fold gathers)."""
    records = sorted(records, key=lambda r: r["fold"])
    folds_run = [r["fold"] for r in records]
    variants = {}
    for name, m in merged.items():
        case_folds = {cid: c["fold"] for cid, c in m["cases"].items()}
        variants[name] = {"predict_args": list(variant_args[name]), "mean": region_means(m["cases"]),
                          "cases": m["cases"], "et_threshold": study(m["thresholds"]),
                          "components": component_study(m["components"], case_folds)}
    return {**meta, "folds_run": folds_run, "complete": len(folds_run) == meta["folds"],
            "n_cases": sum(len(r["held_out"]) for r in records), "fold_runs": records, "variants": variants}


def report_name(report: dict) -> str:
    """learn.json for every fold; learn_folds_I_J.json for a part (what `bench merge` joins)."""
    return "learn.json" if report["complete"] else "learn_folds_" + "_".join(map(str, report["folds_run"])) + ".json"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def means_table(variants: dict[str, dict]) -> str:
    """| variant | cases | WT Dice | TC Dice | ET Dice | WT HD95 | ... | (means over held-out cases)."""
    head = ["variant", "cases", *(f"{r} Dice" for r in REGION_NAMES), *(f"{r} HD95 mm" for r in REGION_NAMES)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, v in variants.items():
        m = v["mean"]
        cells = [name, str(len(v["cases"])), *(_fmt(m[r]["dice"]["mean"]) for r in REGION_NAMES),
                 *(_fmt(m[r]["hd95_mm"]["mean"], 1) for r in REGION_NAMES)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cases_table(cases: dict[str, dict]) -> str:
    """One row per held-out case: its fold, Dice and HD95 per region, true ET volume."""
    head = ["case", "fold", *(f"{r} Dice" for r in REGION_NAMES), *(f"{r} HD95" for r in REGION_NAMES), "true ET mL"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for cid in sorted(cases):
        c = cases[cid]
        cells = [cid, str(c["fold"]), *(_fmt(c[r]["dice"]) for r in REGION_NAMES),
                 *(_fmt(c[r]["hd95_mm"], 1) for r in REGION_NAMES), _fmt(c["ET"]["volume_truth_ml"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def threshold_table_md(study: dict) -> str:
    """ET threshold -> mean ET Dice, TC Dice, ET HD95 over the held-out cases; the choice marked."""
    lines = ["| et_min_mm3 | mean ET Dice | mean TC Dice | mean ET HD95 mm | cases without ET |",
             "| --- | --- | --- | --- | --- |"]
    for row in study["table"]:
        mark = " (chosen)" if row["et_min_mm3"] == study["chosen_et_min_mm3"] else ""
        lines.append(f"| {row['et_min_mm3']:g}{mark} | {row['mean_et_dice']:.4f} | {row['mean_tc_dice']:.4f} | "
                     f"{row['mean_et_hd95_mm']:.1f} | {row['cases_without_et']} |")
    return "\n".join(lines)


def folds_table(folds: list[dict]) -> str:
    lines = ["| fold | held out | train steps | train wall s | status | reused |", "| --- | --- | --- | --- | --- | --- |"]
    for f in folds:
        t = f["train"]
        lines.append(f"| {f['fold']} | {', '.join(f['held_out'])} | {t['steps']} | {_fmt(t['wall_s'], 1)} | "
                     f"{t['status']} | {'yes' if t['reused'] else 'no'} |")
    return "\n".join(lines)


def format_report(report: dict) -> str:
    """Everything bench learn prints: header, means, thresholds, per-case scores, folds."""
    budget = report["budget"]
    what = f"{budget['minutes']:g} min" if budget["minutes"] is not None else f"{budget['steps']} steps"
    folds = f"{report['folds']} folds" if report["complete"] else \
        f"folds {', '.join(map(str, report['folds_run']))} of {report['folds']} (a part; bench merge joins the parts)"
    parts = [f"bench learn: {report['config']} (config hash {report['config_sha256'][:12]}), {folds}, "
             f"{what} per fold, {report['n_cases']} held-out cases",
             "", "Mean over all held-out cases:", means_table(report["variants"])]
    for name, v in report["variants"].items():
        parts += ["", f"ET threshold by cross-validation ({name}): chosen {v['et_threshold']['chosen_et_min_mm3']:g} mm^3",
                  threshold_table_md(v["et_threshold"]), "",
                  f"Component rule by cross-validation ({name}): chosen {v['components']['chosen']['predict_args']} "
                  f"({v['components']['gain_over_none']:+.4f} mean Dice over none on the cases it was chosen on; "
                  f"{v['components']['nested_gain_over_none']:+.4f} when each fold's rule is chosen on the other folds)",
                  component_table_md(v["components"]), "", f"Per case ({name}):", cases_table(v["cases"])]
    parts += ["", "Folds:", folds_table(report["fold_runs"]), "", f"-> {report['out']}"]
    return "\n".join(parts)
