"""`bench merge` refuses parts that are not of one study, or damaged, in one line (exit 2), and
`bench learn --only-folds` refuses indices that are not the study's folds. The parts here are
written by hand in bench learn's format, so no training runs."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from brats_seg.bench.learn_components import COMPONENT_GRID
from tests.integration.test_bench_learn import _main

GRID = [0.0, 500.0]


def _region(dice: float) -> dict:
    return {"dice": dice, "hd95_mm": 3.0, "volume_pred_ml": 1.0, "volume_truth_ml": 1.2}


def _part(fold: int, cases: list[str]) -> dict:
    """A part with one fold holding out `cases`, as bench learn writes it."""
    case = {"fold": fold, "WT": _region(0.8), "TC": _region(0.7), "ET": _region(0.6)}
    thr = [{"et_min_mm3": t, "et_dice": 0.6, "tc_dice": 0.7, "et_hd95_mm": 3.0, "et_ml": 1.0} for t in GRID]
    comp = [{"min_component_mm3": a, "min_component_fraction": b, "WT_dice": 0.8, "TC_dice": 0.7, "ET_dice": 0.6}
            for a, b in COMPONENT_GRID]
    return {"kind": "brats-seg bench learn", "config": "c.yaml", "overrides": [], "config_sha256": "ab" * 32,
            "budget": {"minutes": None, "steps": 4, "time_budget_s": 0.0}, "folds": 2, "seed": 0, "split_seed": 0,
            "predict_args": [], "et_grid_mm3": GRID, "data": {"raw": "r.json"},
            "fold_runs": [{"fold": fold, "held_out": cases, "train": {"status": "finished", "steps": 4,
                                                                      "wall_s": 1.0, "reused": False}}],
            "variants": {"base": {"predict_args": [], "cases": {c: case for c in cases},
                                  "et_threshold": {"per_case": {c: thr for c in cases}},
                                  "components": {"per_case": {c: comp for c in cases}}}}}


def _write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def _merge(tmp_path, second: dict) -> tuple[int, str]:
    a = _write(tmp_path / "a.json", _part(0, ["c0", "c1"]))
    b = _write(tmp_path / "b.json", second)
    code, _, err = _main("bench", "merge", a, b, "--out", tmp_path / "m.json")
    return code, err


def test_good_parts_merge(tmp_path):
    code, err = _merge(tmp_path, _part(1, ["c2", "c3"]))
    assert code == 0, err
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["complete"] and report["n_cases"] == 4
    assert report["variants"]["base"]["mean"]["WT"]["dice"]["mean"] == pytest.approx(0.8)


def _edited(edit) -> dict:
    doc = copy.deepcopy(_part(1, ["c2", "c3"]))
    edit(doc)
    return doc


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.update(config_sha256="cd" * 32), "config_sha256"),
    (lambda d: d["budget"].update(steps=8), "budget"),
    (lambda d: d.update(split_seed=3), "split_seed"),
    (lambda d: d.update(et_grid_mm3=[0.0]), "grid"),
    (lambda d: (d["fold_runs"][0].update(fold=0), d["variants"]["base"]["cases"]["c2"].update(fold=0)),
     "each fold in one part"),
    (lambda d: d["variants"]["base"]["cases"]["c2"].update(fold=0), "scored in fold 0"),
    (lambda d: d["fold_runs"][0].update(fold=7), "outside"),
    (lambda d: d.update(_part(1, ["c1", "c3"])), "another part holds out too"),
    (lambda d: d["variants"]["base"]["cases"]["c2"]["WT"].update(dice=1.5), "dice"),
    (lambda d: d["variants"]["base"]["cases"]["c2"]["ET"].update(hd95_mm=float("nan")), "hd95_mm"),
    (lambda d: d["variants"]["base"]["et_threshold"]["per_case"].pop("c3"), "held-out cases"),
    (lambda d: d["variants"]["base"]["components"]["per_case"]["c3"].pop(), "grid"),
    (lambda d: d["variants"]["base"]["et_threshold"]["per_case"]["c2"][0].pop("tc_dice"), "tc_dice"),
    (lambda d: d["variants"]["base"].update(predict_args=["--tta"]), "variants"),
    (lambda d: d.update(kind="something else"), "kind"),
    (lambda d: d.pop("fold_runs"), "fold_runs"),
    (lambda d: d.update(_part(1, [])), "no scored fold"),
])
def test_parts_of_another_study_or_damaged_are_refused(tmp_path, edit, words):
    code, err = _merge(tmp_path, _edited(edit))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], err
    assert "b.json" in lines[0] or "a.json" in lines[0]
    assert not (tmp_path / "m.json").exists()


def test_merge_never_replaces_a_part(tmp_path):
    a = _write(tmp_path / "a.json", _part(0, ["c0", "c1"]))
    b = _write(tmp_path / "b.json", _part(1, ["c2", "c3"]))
    before = b.read_bytes()
    code, _, err = _main("bench", "merge", a, b, "--out", b)
    assert code == 2 and "--out" in err and b.read_bytes() == before


def test_missing_or_broken_part(tmp_path):
    a = _write(tmp_path / "a.json", _part(0, ["c0", "c1"]))
    (tmp_path / "b.json").write_text('{"kind": ')
    for b in (tmp_path / "b.json", tmp_path / "none.json"):
        code, _, err = _main("bench", "merge", a, b, "--out", tmp_path / "m.json")
        assert code == 2 and str(b) in err and len(err.strip().splitlines()) == 1, err


def test_a_folder_given_as_a_part_is_named_as_one(tmp_path):
    a = _write(tmp_path / "a.json", _part(0, ["c0", "c1"]))
    (tmp_path / "run").mkdir()
    code, _, err = _main("bench", "merge", a, tmp_path / "run", "--out", tmp_path / "m.json")
    assert code == 2 and "is a folder, not a file" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("value", ["2", "-1", "0,0", "a", "", "0,", "1.0"])
def test_only_folds_must_be_the_studys_folds(tmp_path, value):
    (tmp_path / "raw.json").write_text("{}")
    code, _, err = _main("bench", "learn", "--data", tmp_path / "raw.json", "--folds", "2", "--steps", "4",
                         "--out", tmp_path / "o", "--only-folds", value)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--only-folds" in lines[0], err
    assert not (tmp_path / "o").exists()


def test_the_committed_study_parts_merge_into_the_committed_report(tmp_path):
    """The 60-minute row's two parts (pipelines/studies/results/) must stay readable by bench merge and
    join into the report committed beside them, or the row's figures could not be re-derived."""
    results = Path(__file__).resolve().parents[2] / "pipelines" / "studies" / "results"
    parts = [results / "m60_learn_folds_0_1.json", results / "m60_learn_folds_2_3.json"]
    code, out, err = _main("bench", "merge", *parts, "--out", tmp_path / "m.json")
    assert code == 0, err
    report = json.loads((tmp_path / "m.json").read_text())
    committed = json.loads((results / "m60_learn.json").read_text())
    assert report["folds_run"] == [0, 1, 2, 3] and report["complete"] and report["n_cases"] == 12
    for variant in ("base", "tta"):
        assert report["variants"][variant]["mean"] == committed["variants"][variant]["mean"]
        assert report["variants"][variant]["components"] == committed["variants"][variant]["components"]
    assert report["variants"]["base"]["mean"]["WT"]["dice"]["mean"] == pytest.approx(0.716, abs=5e-4)
    code, _, err = _main("bench", "merge", parts[0], "--out", tmp_path / "half.json")
    assert code == 0 and json.loads((tmp_path / "half.json").read_text())["n_cases"] == 6, err
