"""`bench paired`: two bench learn studies compared case by case, from their learn.json files; damaged
or foreign files are one error line."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from brats_seg.bench.paired import format_paired, paired_report, wilcoxon_p
from brats_seg.errors import InputError


def _study(folder: Path, dice: dict[str, tuple[float, float, float]], folds: list[list[str]],
           sha: str = "a" * 64, **extra) -> Path:
    fold_of = {c: i for i, held in enumerate(folds) for c in held}
    regions = ("WT", "TC", "ET")
    cases = {c: {"fold": fold_of[c], **{r: {"dice": d, "hd95_mm": 10.0 * (1 - d)} for r, d in zip(regions, v)}}
             for c, v in dice.items()}
    folder.mkdir(parents=True)
    doc = {"kind": "brats-seg bench learn", "config_sha256": sha, "variants": {"base": {"cases": cases}},
           "fold_runs": [{"fold": i, "held_out": held} for i, held in enumerate(folds)], **extra}
    (folder / "learn.json").write_text(json.dumps(doc))
    return folder


CASES = [f"c{i}" for i in range(8)]
FOLDS = [CASES[:4], CASES[4:]]


def test_differences_counts_and_fold_match(tmp_path):
    a = _study(tmp_path / "a", {c: (0.8, 0.6, 0.5) for c in CASES}, FOLDS)
    b_dice = {c: (0.8 + 0.01 * (i + 1), 0.6, 0.5 - (0.1 if i == 0 else 0.0)) for i, c in enumerate(CASES)}
    b = _study(tmp_path / "b", b_dice, FOLDS, sha="b" * 64)
    report = paired_report(a, b / "learn.json")
    wt, tc, et = (report["regions"][r] for r in ("WT", "TC", "ET"))
    assert wt["better"] == 8 and wt["worse"] == 0 and wt["dice_diff"] == pytest.approx(0.045)
    assert wt["wilcoxon_p"] < 0.01  # eight of eight better: p = 2 / 2**8
    assert tc["better"] == tc["worse"] == 0 and tc["wilcoxon_p"] == 1.0
    assert et["worse"] == 1 and et["dice_diff"] == pytest.approx(-0.1 / 8)
    assert wt["hd95_diff_mm"] == pytest.approx(-0.45)
    assert report["same_folds"] and report["config_sha256"] == {"a": "a" * 64, "b": "b" * 64}
    text = format_paired(report)
    assert "| WT | 0.800 | 0.845 | +0.045 | 8/8 | 0/8 |" in text and "the same folds" in text


def test_other_folds_are_said_and_unshared_cases_listed(tmp_path):
    a = _study(tmp_path / "a", {c: (0.8, 0.6, 0.5) for c in CASES}, FOLDS)
    other = [CASES[::2], CASES[1::2] + ["extra"]]
    b = _study(tmp_path / "b", {c: (0.7, 0.6, 0.5) for c in [*CASES, "extra"]}, other)
    report = paired_report(a, b)
    assert not report["same_folds"] and report["only_in_b"] == ["extra"] and len(report["cases"]) == 8
    assert "other folds" in format_paired(report) and "not paired (only in b): extra" in format_paired(report)


def test_wilcoxon_matches_the_exact_two_sided_value():
    assert wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)
    assert wilcoxon_p([0.0, 0.0]) == 1.0


@pytest.mark.parametrize("damage,needle", [
    (lambda d: d.update(kind="brats-seg bench train"), "kind is 'brats-seg bench train'"),
    (lambda d: d["variants"]["base"]["cases"]["c0"]["WT"].update(dice=1.5), "less than or equal to 1"),
    (lambda d: d["variants"]["base"]["cases"]["c0"].pop("ET"), "ET"),
    (lambda d: d["variants"].pop("base"), "has no variant 'base'"),
])
def test_a_damaged_or_foreign_study_is_one_error_naming_it(tmp_path, damage, needle):
    a = _study(tmp_path / "a", {c: (0.8, 0.6, 0.5) for c in CASES}, FOLDS)
    b = _study(tmp_path / "b", {c: (0.8, 0.6, 0.5) for c in CASES}, FOLDS)
    doc = json.loads((b / "learn.json").read_text())
    damage(doc)
    (b / "learn.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=needle) as info:
        paired_report(a, b)
    assert str(b) in info.value.line()


def test_studies_of_other_data_are_refused(tmp_path):
    a = _study(tmp_path / "a", {c: (0.8, 0.6, 0.5) for c in CASES}, FOLDS)
    b = _study(tmp_path / "b", {f"x{i}": (0.8, 0.6, 0.5) for i in range(4)}, [[f"x{i}" for i in range(4)]])
    with pytest.raises(InputError, match="shares 0 held-out case"):
        paired_report(a, b)


def test_cli_prints_the_table_and_writes_the_report(tmp_path, run_cli):
    a = _study(tmp_path / "a", {c: (0.8, 0.6, 0.5) for c in CASES}, FOLDS)
    b = _study(tmp_path / "b", {c: (0.9, 0.6, 0.5) for c in CASES}, FOLDS)
    code, out, err = run_cli("bench", "paired", a, b, "--out", tmp_path / "r" / "paired.json")
    assert code == 0, err
    assert "| WT | 0.800 | 0.900 | +0.100 | 8/8 |" in out
    saved = json.loads((tmp_path / "r" / "paired.json").read_text())
    assert saved["regions"]["WT"]["better"] == 8 and (tmp_path / "r" / "paired.md").is_file()
    code, _, err = run_cli("bench", "paired", a, tmp_path / "missing", "--out", tmp_path / "r2.json")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "missing" in err and "not found" in err, err
    before = (a / "learn.json").read_bytes()
    code, _, err = run_cli("bench", "paired", a, b, "--out", a / "learn.json")
    assert code == 2 and "--out" in err and (a / "learn.json").read_bytes() == before, err


def test_report_paths_that_would_lose_or_block_a_report_are_refused_first(tmp_path, run_cli):
    """--out X.md (its .md sibling is itself), a FIFO (write would block), a folder where the .md goes,
    and a path below a file: each one line, exit 2, nothing written."""
    import os

    a = _study(tmp_path / "a", {c: (0.8, 0.6, 0.5) for c in CASES}, FOLDS)
    b = _study(tmp_path / "b", {c: (0.9, 0.6, 0.5) for c in CASES}, FOLDS)
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "blocked.md").mkdir()
    for out, needle in ((tmp_path / "r.md", "Markdown table goes beside it"),
                        (tmp_path / "fifo.json", "not a regular file"),
                        (tmp_path / "blocked.json", "not a regular file"),
                        (a / "learn.json" / "x.json", "which is a file")):
        code, _, err = run_cli("bench", "paired", a, b, "--out", out)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "r.md").exists() and not (tmp_path / "blocked.json").exists()


def test_infinite_hd95_is_refused(tmp_path):
    a = _study(tmp_path / "a", {c: (0.8, 0.6, 0.5) for c in CASES}, FOLDS)
    b = _study(tmp_path / "b", {c: (0.8, 0.6, 0.5) for c in CASES}, FOLDS)
    text = re.sub(r'"hd95_mm": [0-9.e-]+', '"hd95_mm": Infinity', (b / "learn.json").read_text(), count=1)
    (b / "learn.json").write_text(text)
    with pytest.raises(InputError, match="hd95_mm"):
        paired_report(a, b)


def test_cases_missing_from_fold_runs_make_the_fold_match_unknown(tmp_path):
    a = _study(tmp_path / "a", {c: (0.8, 0.6, 0.5) for c in CASES}, FOLDS)
    b = _study(tmp_path / "b", {c: (0.8, 0.6, 0.5) for c in CASES}, FOLDS)
    doc = json.loads((a / "learn.json").read_text())
    doc["fold_runs"] = []
    (a / "learn.json").write_text(json.dumps(doc))
    report = paired_report(a, b)
    assert report["same_folds"] is None and "fold assignment unknown" in format_paired(report)
