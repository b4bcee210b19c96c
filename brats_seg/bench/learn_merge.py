"""`brats-seg bench merge PART... --out learn.json`: the parts of one `bench learn` study joined.

A study whose folds ran apart (`bench learn --only-folds I`, one cluster array job per fold, or
folds spread over sessions whose study folders are gone) leaves one learn_folds_*.json per part.
Each part holds every per-case score the report is made of (Dice, HD95, volumes, and each case's
row of the ET-threshold and component grids), so the joined report is recomputed from the parts
alone, with the same code as `bench learn`: means over every case, the ET threshold and the
component rule chosen over every case, the nested estimate across every fold. Parts are refused
unless they are of one study (recipe hash, budget, folds, split seed, grids, predict variants) and
their folds do not overlap.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from brats_seg.bench.learn_components import COMPONENT_GRID
from brats_seg.bench.learn_report import LEARN_KIND, assemble_report
from brats_seg.bench.learn_schema import LearnPart
from brats_seg.contracts.jsonfile import read_model
from brats_seg.engine.run_info import git_commit, now
from brats_seg.errors import InputError

EXPECTED = "a report of `brats-seg bench learn` (learn.json or learn_folds_*.json)"
SAME_STUDY = ("config_sha256", "budget", "folds", "split_seed", "et_grid_mm3", "predict_args")


def read_part(path: Path) -> LearnPart:
    """One part, parsed and checked on its own: its cases are its folds' and its grids are whole."""
    part = read_model(path, LearnPart, EXPECTED)
    if part.kind != LEARN_KIND:
        raise InputError(path, f"kind is {part.kind!r}; expected {LEARN_KIND!r} ({EXPECTED})")
    held = {cid: f.fold for f in part.fold_runs for cid in f.held_out}
    if not held:
        raise InputError(path, f"holds no scored fold; expected {EXPECTED} with at least one fold")
    if any(not f.fold < part.folds for f in part.fold_runs):
        raise InputError(path, f"lists a fold outside 0..{part.folds - 1} (folds {part.folds})")
    grid = [float(t) for t in part.et_grid_mm3]
    components = list(COMPONENT_GRID)
    for name, variant in part.variants.items():
        for cid, case in variant.cases.items():
            if held.get(cid) != case.fold:
                raise InputError(path, f"variant {name}: case {cid} is scored in fold {case.fold} but fold_runs "
                                       f"holds it out in {held.get(cid)}; expected a report as bench learn wrote it")
        if set(variant.cases) != set(held) or set(variant.et_threshold.per_case) != set(held) or \
                set(variant.components.per_case) != set(held):
            raise InputError(path, f"variant {name}: its scored cases are not the held-out cases of its folds; "
                                   "expected a report as bench learn wrote it")
        if any([r.et_min_mm3 for r in rows] != grid for rows in variant.et_threshold.per_case.values()) or any(
                [(r.min_component_mm3, r.min_component_fraction) for r in rows] != components
                for rows in variant.components.per_case.values()):
            raise InputError(path, f"variant {name}: a case's post-processing rows are not the grid's; expected a "
                                   "report of this version of bench learn (rerun it: finished folds are kept)")
    return part


def check_same_study(parts: Sequence[LearnPart], paths: Sequence[Path]) -> None:
    """Every part is of the first's study, with its own folds."""
    first = parts[0]
    seen: dict[int, Path] = {}
    for part, path in zip(parts, paths):
        for key in SAME_STUDY:
            if getattr(part, key) != getattr(first, key):
                raise InputError(path, f"{key} is {getattr(part, key)!r} but {paths[0]} has "
                                       f"{getattr(first, key)!r}; expected parts of one study")
        if {n: v.predict_args for n, v in part.variants.items()} != \
                {n: v.predict_args for n, v in first.variants.items()}:
            raise InputError(path, f"predict variants differ from {paths[0]}'s; expected parts of one study")
        for f in part.fold_runs:
            if f.fold in seen:
                raise InputError(path, f"holds fold {f.fold}, which {seen[f.fold]} holds too; expected each fold "
                                       "in one part")
            seen[f.fold] = path
    cases = [c for p in parts for f in p.fold_runs for c in f.held_out]
    if len(cases) != len(set(cases)):
        raise InputError(paths[-1], "holds a case another part holds out too; expected the folds of one split")


def merge_parts(paths: Sequence[Path], out: Path) -> dict:
    """The report of every fold in the parts, recomputed from their per-case scores."""
    parts = [read_part(p) for p in paths]
    check_same_study(parts, paths)
    pairs = sorted(zip(parts, paths), key=lambda pp: min(f.fold for f in pp[0].fold_runs))  # cases in fold order
    parts, paths = [pp[0] for pp in pairs], [pp[1] for pp in pairs]
    study = parts[0].model_dump(include={"config", "overrides", "config_sha256", "budget", "folds", "seed",
                                         "split_seed", "predict_args", "et_grid_mm3"})
    meta = {"kind": LEARN_KIND, "created_at": now(), "git_commit": git_commit(), **study,
            "data": [(p.model_extra or {}).get("data") for p in parts], "out": str(out),
            "merged_from": [str(p) for p in paths]}
    records = [f.model_dump() for p in parts for f in p.fold_runs]
    merged = {name: {"cases": {}, "thresholds": {}, "components": {}} for name in parts[0].variants}
    for part in parts:
        for name, v in part.variants.items():
            merged[name]["cases"].update({c: case.model_dump() for c, case in v.cases.items()})
            merged[name]["thresholds"].update({c: [r.model_dump() for r in rows]
                                               for c, rows in v.et_threshold.per_case.items()})
            merged[name]["components"].update({c: [r.model_dump() for r in rows]
                                               for c, rows in v.components.per_case.items()})
    return assemble_report(meta, records, merged, {n: v.predict_args for n, v in parts[0].variants.items()})
