"""`brats-seg bench learn`: judge a training recipe by K-fold cross-validation on real cases.

    brats-seg bench learn --config C --data raw.json|preprocessed.json (--minutes M | --steps S)
                          --folds K --out DIR [--predict-args "..."] [--compare-tta] [KEY=VALUE ...]

Each fold is a real `brats-seg train` run (data.folds=K data.fold=I: it trains on every case but
the fold's), then `brats-seg predict --manifest` on the held-out cases' raw files (original
geometry) with the weights training ended with (checkpoints/latest.pt: best.pt is chosen by
validation on the held-out cases, so using it would leak them), then the evaluate stage. Every
case is scored once, as a held-out case. The ET threshold of post-processing is then chosen on
the saved masks (bench/learn_threshold.py). A finished fold (run.json status, current
predictions) is kept on a rerun; a killed one resumes (`brats-seg train --resume`).

DIR holds: preprocessed/ (when --data is a raw manifest), fold_I/ (heldout_raw.json, run/, train.log,
pred_<variant>/, eval_<variant>/, the predict logs and markers) and learn.json, written atomically
at the end with every figure printed. `--only-folds I,J` runs some folds only (a cluster array job
per fold, or a study spread over sessions) and writes learn_folds_I_J.json instead; `brats-seg
bench merge` joins such parts into the full report, from the parts alone.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

from brats_seg.bench.learn_folds import (Fold, StepFailed, plan_folds, predict_fold, train_fold,
                                         write_heldout_manifest)
from brats_seg.bench.learn_options import DEFAULT_SPACING, LearnOptions, options_from_args
from brats_seg.bench.learn_components import component_scores
from brats_seg.bench.learn_report import LEARN_KIND, assemble_report, format_report, read_case_rows, report_name
from brats_seg.bench.learn_threshold import case_scores, fold_pairs
from brats_seg.core.atomic import atomic_write_json
from brats_seg.core.hashing import sha256_file
from brats_seg.engine.config import config_hash
from brats_seg.engine.run_info import git_commit, now
from brats_seg.errors import InputError
from brats_seg.io.manifest import load_manifest
from brats_seg.seg3d.config import Config3D, load_config, split_seed



def resolve_data(opts: LearnOptions) -> tuple[Path, Path]:
    """(raw manifest, preprocessed.json): a raw --data is preprocessed into DIR/preprocessed at
    --spacing (resumable); a preprocessed --data leads to the raw manifest it was made from.
    --folds is held to the labelled cases first, so a bad K fails before any preprocessing."""
    manifest = load_manifest(opts.data)
    labelled = sum(1 for c in manifest["cases"] if c.get("seg"))
    if opts.folds > labelled:
        raise InputError("--folds", f"got {opts.folds}; {opts.data} has {labelled} labelled case(s), expected "
                                    f"2 to {labelled} folds (each case is held out once)")
    if manifest["stage"] == "raw":
        return opts.data, _preprocess(opts)
    if manifest["stage"] != "preprocessed":
        raise InputError(opts.data, f"is a {manifest['stage']!r} manifest; expected ingest's raw.json or "
                                    "preprocess's preprocessed.json")
    if opts.spacing is not None:
        raise InputError("--spacing", "applies to a raw manifest only; a preprocessed.json keeps its own spacing")
    raw = Path(str(manifest["config"].get("raw_manifest", "")))
    if not raw.is_file():
        raise InputError(opts.data, f"names the raw manifest {raw}, which is not there; pass the raw manifest "
                                    "(brats-seg ingest's raw.json) as --data")
    recorded = manifest.get("input_manifest_sha256")
    if recorded is None:  # optional in the schema: a hand-made manifest cannot be tied to its raw one
        raise InputError(opts.data, "has no input_manifest_sha256, so the raw manifest its held-out cases are "
                                    "predicted from cannot be checked; pass the raw manifest as --data")
    if sha256_file(raw) != recorded:
        raise InputError(opts.data, f"was made from another version of {raw}; rerun preprocess or pass the raw "
                                    "manifest as --data")
    return raw, opts.data


def _preprocess(opts: LearnOptions) -> Path:
    from brats_seg.commands.preprocess import parse_spacing
    from brats_seg.preprocess.case import PreprocessConfig
    from brats_seg.preprocess.stage import run_preprocess

    cfg = PreprocessConfig(spacing=parse_spacing(opts.spacing or DEFAULT_SPACING))
    summary = run_preprocess(opts.data, opts.out / "preprocessed", cfg, workers=opts.workers,
                             data_roots=opts.data_roots)
    if summary["failed"]:
        raise InputError(opts.data, f"{summary['failed']} case(s) failed to preprocess (lines above); fix or "
                                    "leave them out (brats-seg ingest --skip-invalid) so every case is scored")
    return Path(summary["manifest"])


def labelled_ids(raw: Path, preprocessed: Path) -> list[str]:
    """The cases the study holds out: labelled in the preprocessed manifest (what training splits),
    each with its label map in the raw manifest (what scores it)."""
    pre = [c["id"] for c in load_manifest(preprocessed, stage="preprocessed")["cases"] if c.get("seg")]
    truth = {c["id"] for c in load_manifest(raw, stage="raw")["cases"] if c.get("seg")}
    missing = sorted(set(pre) - truth)
    if missing:
        raise InputError(raw, f"has no label map for {', '.join(missing)}, which {preprocessed} trains on")
    return pre


def budget_overrides(opts: LearnOptions, config: Path) -> list[str]:
    """The user's overrides plus the budget: a time budget, or a schedule that ends at --steps."""
    if opts.minutes is not None:
        return [*opts.overrides, f"train.time_budget_s={opts.budget_s!r}"]
    per_epoch = load_config(config, opts.overrides).train.steps_per_epoch
    return [*opts.overrides, f"train.epochs={math.ceil(opts.steps / per_epoch)}", f"train.max_steps={opts.steps}",
            "train.time_budget_s=0"]


def check_recipe(config: Path, overrides: Sequence[str]) -> Config3D:
    """The recipe's config (parsed once here, so a bad key fails before any fold trains). Its hash,
    with data.fold=-1, is the run.json config_sha256 of the recipe trained on every case."""
    cfg = load_config(config, overrides)
    if cfg.schedule.name == "plateau":
        raise InputError("schedule.name", "plateau lowers the LR on validation Dice, which a fold computes on its "
                                          "held-out cases; judge poly, cosine or constant schedules")
    return cfg


def run_fold(fold: Fold, opts: LearnOptions, raw: Path, pp: Path, overrides: list[str]) -> tuple[dict, dict]:
    """Train, predict and evaluate one fold: (its record, variant -> {case scores, threshold scores})."""
    from brats_seg.evaluate.stage import evaluate

    roots = write_heldout_manifest(raw, fold.held_out, fold.heldout_raw, opts.data_roots)
    fold_over = [*overrides, f"data.folds={opts.folds}", f"data.fold={fold.index}"]
    sha = config_hash(load_config(opts.config, fold_over))
    train = train_fold(fold, opts.config, pp, fold_over, sha, opts.budget_s)
    record = {"fold": fold.index, "held_out": list(fold.held_out), "train": train, "predict": {}}
    scores = {}
    for name, args in opts.variants.items():
        pred = predict_fold(fold, name, args, (*opts.data_roots, *roots))
        record["predict"][name] = pred
        eval_dir = fold.folder / f"eval_{name}"
        evaluate(Path(pred["dir"]), fold.heldout_raw, eval_dir, data_roots=(*opts.data_roots, *roots))
        scores[name] = {"cases": read_case_rows(eval_dir, fold.index),
                        **postprocess_scores(Path(pred["dir"]), fold.heldout_raw, (*opts.data_roots, *roots), opts)}
    return record, scores


def postprocess_scores(pred_dir: Path, truth: Path, roots: Sequence[Path], opts: LearnOptions) -> dict:
    """Per held-out case, the scores of every ET threshold and component rule on its saved mask."""
    thresholds, components = {}, {}
    for cid, pred, ref, spacing in fold_pairs(pred_dir, truth, roots):
        thresholds[cid] = case_scores(pred, ref, spacing, opts.et_grid)
        components[cid] = component_scores(pred, ref, spacing)
    return {"thresholds": thresholds, "components": components}


def bench_learn(opts: LearnOptions) -> dict:
    """Run (or finish) the study, or the folds of --only-folds; returns the report also written to
    DIR/learn.json (every fold) or DIR/learn_folds_I_J.json (some: `bench merge` joins such parts)."""
    overrides = budget_overrides(opts, opts.config)
    cfg = check_recipe(opts.config, [*overrides, "data.fold=-1"])  # the recipe trained on every case
    raw, pp = resolve_data(opts)
    folds = plan_folds(labelled_ids(raw, pp), opts.folds, split_seed(cfg), opts.out)
    folds = [f for f in folds if not opts.only_folds or f.index in opts.only_folds]
    records, merged = [], {name: {"cases": {}, "thresholds": {}, "components": {}} for name in opts.variants}
    for fold in folds:
        record, scores = run_fold(fold, opts, raw, pp, overrides)
        records.append(record)
        for name, s in scores.items():
            merged[name]["cases"].update(s["cases"])
            for key in ("thresholds", "components"):
                merged[name][key].update(s[key])
    meta = {
        "kind": LEARN_KIND, "created_at": now(), "git_commit": git_commit(),
        "config": str(opts.config), "overrides": list(opts.overrides), "config_sha256": config_hash(cfg),
        "budget": {"minutes": opts.minutes, "steps": opts.steps, "time_budget_s": opts.budget_s},
        "folds": opts.folds, "seed": cfg.seed, "split_seed": split_seed(cfg),
        "data": {"raw": str(raw.resolve()), "preprocessed": str(pp.resolve())},
        "predict_args": list(opts.predict_args), "et_grid_mm3": list(opts.et_grid), "out": str(opts.out),
    }
    report = assemble_report(meta, records, merged, {n: list(a) for n, a in opts.variants.items()})
    path = opts.out / report_name(report)
    atomic_write_json(path, report)
    print(f"bench learn: {len(folds)} of {opts.folds} folds -> {path}", file=sys.stderr)
    return report


def run_learn(args: argparse.Namespace) -> int:
    """Entry point of `bench learn`: 0 done, 2 bad input, 1 a fold's train or predict failed."""
    opts = options_from_args(args)
    try:
        report = bench_learn(opts)
    except StepFailed as exc:
        print(f"error: bench learn: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    return 0
