"""`brats-seg bench paired A B`: two `bench learn` studies compared case by case.

Two rows of means differ by the seed and the split as much as by the recipe (one seed's spread on
the 12 shared cases is ~0.04 mean Dice), so a recipe is judged against a baseline on the *same*
held-out cases: per region the mean of B - A, how many cases B scores better and worse, and the
two-sided Wilcoxon signed-rank p of the per-case differences (scipy). When the studies dealt other
folds (another seed), the pairing still matches cases but also carries the split's noise: the
report says so.
"""
from __future__ import annotations

from pathlib import Path

from brats_seg.bench.learn_report import LEARN_KIND
from brats_seg.bench.learn_schema import Case, LearnStudy, Region
from brats_seg.contracts.jsonfile import read_model
from brats_seg.errors import InputError
from brats_seg.io.labels import REGION_NAMES

def load_study(path: Path, variant: str) -> tuple[LearnStudy, dict[str, Case]]:
    """(study, its variant's cases) from a study folder or its learn.json; InputError otherwise."""
    path = Path(path)
    file = path / "learn.json" if path.is_dir() else path
    expected = "the learn.json a `brats-seg bench learn` study writes"
    study = read_model(file, LearnStudy, expected)
    if study.kind != LEARN_KIND:
        raise InputError(file, f"kind is {study.kind!r}; expected {LEARN_KIND!r} ({expected})")
    if variant not in study.variants:
        raise InputError(file, f"has no variant {variant!r}; it has {', '.join(sorted(study.variants))} "
                               "(see --variant)")
    return study, study.variants[variant].cases


def held_out_sets(study: LearnStudy) -> dict[str, frozenset[str]]:
    """case id -> the set of cases held out with it (its fold's), to tell whether two studies share folds."""
    return {cid: frozenset(f.held_out) for f in study.fold_runs for cid in f.held_out}


def paired_report(a_path: Path, b_path: Path, variant: str = "base") -> dict:
    """Per region: means of A and B over the shared cases, B - A, cases better / worse, Wilcoxon p."""
    study_a, cases_a = load_study(a_path, variant)
    study_b, cases_b = load_study(b_path, variant)
    shared = sorted(set(cases_a) & set(cases_b))
    if len(shared) < 2:
        raise InputError(b_path, f"shares {len(shared)} held-out case(s) with {a_path}; expected the same cases "
                                 "scored in both studies (the same data)")
    folds_a, folds_b = held_out_sets(study_a), held_out_sets(study_b)
    known = all(c in folds_a and c in folds_b for c in shared)  # fold_runs may not list a case (hand-edited)
    same_folds = all(folds_a[c] == folds_b[c] for c in shared) if known else None
    regions = {region: _region_stats([getattr(cases_a[c], region) for c in shared],
                                     [getattr(cases_b[c], region) for c in shared]) for region in REGION_NAMES}
    per_case = {c: {r: {"a": getattr(cases_a[c], r).dice, "b": getattr(cases_b[c], r).dice} for r in REGION_NAMES}
                for c in shared}
    return {"kind": "brats-seg bench paired", "a": str(a_path), "b": str(b_path), "variant": variant,
            "config_sha256": {"a": study_a.config_sha256, "b": study_b.config_sha256}, "cases": shared,
            "only_in_a": sorted(set(cases_a) - set(cases_b)), "only_in_b": sorted(set(cases_b) - set(cases_a)),
            "same_folds": same_folds, "regions": regions, "per_case": per_case}


def _region_stats(a: list[Region], b: list[Region]) -> dict:
    diffs = [y.dice - x.dice for x, y in zip(a, b)]
    n = len(diffs)
    return {"dice_a": sum(x.dice for x in a) / n, "dice_b": sum(y.dice for y in b) / n, "dice_diff": sum(diffs) / n,
            "better": sum(d > 0 for d in diffs), "worse": sum(d < 0 for d in diffs), "n": n,
            "wilcoxon_p": wilcoxon_p(diffs),
            "hd95_diff_mm": sum(y.hd95_mm - x.hd95_mm for x, y in zip(a, b)) / n}


def wilcoxon_p(diffs: list[float]) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences; 1.0 when every difference is 0."""
    from scipy.stats import wilcoxon

    if not any(diffs):
        return 1.0
    return float(wilcoxon(diffs, zero_method="wilcox", alternative="two-sided").pvalue)


def format_paired(report: dict) -> str:
    """The Markdown the command prints: one row per region, then each case's Dice in A and B."""
    folds = {True: "the same folds", None: "fold assignment unknown (fold_runs does not list every case)",
             False: "other folds (another seed or split: the pairing also carries the split's noise)"}
    folds = folds[report["same_folds"]]
    lines = [f"bench paired: B = {report['b']} against A = {report['a']} ({report['variant']}), "
             f"{len(report['cases'])} shared held-out cases, {folds}", "",
             "| region | A Dice | B Dice | B - A | B better | B worse | Wilcoxon p | B - A HD95 mm |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for region, s in report["regions"].items():
        lines.append(f"| {region} | {s['dice_a']:.3f} | {s['dice_b']:.3f} | {s['dice_diff']:+.3f} | "
                     f"{s['better']}/{s['n']} | {s['worse']}/{s['n']} | {s['wilcoxon_p']:.3f} | "
                     f"{s['hd95_diff_mm']:+.1f} |")
    lines += ["", "| case | " + " | ".join(f"{r} A -> B" for r in REGION_NAMES) + " |",
              "|" + " --- |" * (1 + len(REGION_NAMES))]
    for cid, scores in report["per_case"].items():
        cells = [f"{scores[r]['a']:.3f} -> {scores[r]['b']:.3f}" for r in REGION_NAMES]
        lines.append(f"| {cid} | " + " | ".join(cells) + " |")
    for side in ("only_in_a", "only_in_b"):
        if report[side]:
            lines.append(f"\nnot paired ({side.replace('_', ' ')}): {', '.join(report[side])}")
    return "\n".join(lines)
