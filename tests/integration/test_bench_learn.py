"""`brats-seg bench learn` on 4 tiny cases, 2 folds, 4 steps: every case held out once and scored
by the real train / predict / evaluate path, the ET threshold table, reuse of finished folds, and
bad options as one-line errors."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from brats_seg.bench.learn_components import COMPONENT_GRID
from brats_seg.bench.learn_folds import CHECKPOINT, Fold, train_state, wait_through_ctrl_c
from brats_seg.engine.config import config_hash
from brats_seg.errors import InputError
from brats_seg.seg3d.config import load_config

IDS = [f"case{i}" for i in range(4)]
TINY_YAML = """task: 3d
model: {features: [4, 8, 16]}
data: {patch_size: [16, 16, 16], batch_size: 2, num_workers: 0}
train: {num_threads: 1, progress: false, log_every_steps: 1, steps_per_epoch: 2, device: cpu, amp: none}
validation: {every_epochs: 100, sw_batch_size: 4}
optim: {name: adamw, lr: 0.01}
schedule: {name: constant}
"""


def _main(*argv) -> tuple[int, str, str]:
    from brats_seg.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's own refusals (usage line + error line)
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def _learn(root: Path, out: Path, *extra) -> tuple[int, str, str]:
    return _main("bench", "learn", "--config", root / "tiny.yaml", "--data", root / "raw.json", "--folds", 2,
                 "--steps", 4, "--spacing", "native", "--out", out, "--predict-args", "--threads 1",
                 "--et-grid", "0,100,500", *extra)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from brats_seg.ingest.stage import ingest
    from tests.conftest import make_case

    root = tmp_path_factory.mktemp("learn")
    for i, cid in enumerate(IDS):
        make_case(root / "src", cid, seed=i)
    ingest([root / "src"], root / "raw.json")
    (root / "tiny.yaml").write_text(TINY_YAML)
    code, out, err = _learn(root, root / "cv")
    assert code == 0, err
    return root, json.loads((root / "cv" / "learn.json").read_text()), out


def test_every_case_is_held_out_once_and_trained_on_by_the_other_fold(study):
    root, report, _ = study
    held = [c for f in report["fold_runs"] for c in f["held_out"]]
    assert sorted(held) == IDS and len(report["fold_runs"]) == 2
    for fold in report["fold_runs"]:
        run = json.loads((root / "cv" / f"fold_{fold['fold']}" / "run" / "run.json").read_text())
        assert run["split"]["val"] == fold["held_out"]
        assert sorted(run["split"]["train"]) == sorted(set(IDS) - set(fold["held_out"]))
        assert fold["train"]["steps"] == 4 and fold["train"]["status"] == "finished"
        assert run["config"]["train"]["max_steps"] == 4 and run["config"]["data"]["folds"] == 2


def test_learn_json_has_per_case_scores_and_the_recipe_hash(study):
    root, report, out = study
    cases = report["variants"]["base"]["cases"]
    assert sorted(cases) == IDS
    for cid, entry in cases.items():
        for region in ("WT", "TC", "ET"):
            assert 0.0 <= entry[region]["dice"] <= 1.0 and entry[region]["hd95_mm"] >= 0.0
        assert cid in out  # the per-case table
    assert any(c["WT"]["dice"] > 0 for c in cases.values())  # the masks are the model's, on the truth's grid
    mean = report["variants"]["base"]["mean"]["WT"]["dice"]["mean"]
    assert mean == pytest.approx(sum(c["WT"]["dice"] for c in cases.values()) / 4)
    recipe = load_config(root / "tiny.yaml", ["train.epochs=2", "train.max_steps=4", "train.time_budget_s=0",
                                              "data.fold=-1"])
    assert report["config_sha256"] == config_hash(recipe) and report["config_sha256"][:12] in out


def test_threshold_table_picks_the_best_mean_et_dice(study):
    _, report, out = study
    et = report["variants"]["base"]["et_threshold"]
    assert [r["et_min_mm3"] for r in et["table"]] == [0.0, 100.0, 500.0]
    assert sorted(et["per_case"]) == IDS
    means = {t: sum(c[i]["et_dice"] for c in et["per_case"].values()) / 4 for i, t in enumerate((0.0, 100.0, 500.0))}
    best = max(means.values())
    assert et["chosen_et_min_mm3"] == min(t for t, m in means.items() if m >= best - 1e-12)
    assert all(r["mean_et_dice"] == pytest.approx(means[r["et_min_mm3"]]) for r in et["table"])
    assert f"chosen {et['chosen_et_min_mm3']:g} mm^3" in out
    # at threshold 0 the table is evaluate's own ET Dice
    cases = report["variants"]["base"]["cases"]
    assert [c[0]["et_dice"] for _, c in sorted(et["per_case"].items())] == \
        pytest.approx([cases[cid]["ET"]["dice"] for cid in sorted(cases)])


def test_component_rule_is_chosen_on_every_held_out_case(study):
    _, report, out = study
    comp = report["variants"]["base"]["components"]
    assert sorted(comp["per_case"]) == IDS and len(comp["table"]) == len(COMPONENT_GRID)
    means = [sum(c[i]["WT_dice"] for c in comp["per_case"].values()) / 4 for i in range(len(COMPONENT_GRID))]
    assert [r["mean_WT_dice"] for r in comp["table"]] == pytest.approx(means)
    best = max(r["mean_dice"] for r in comp["table"])
    assert comp["chosen_mean_dice"] == pytest.approx(best)
    assert comp["gain_over_none"] == pytest.approx(best - comp["table"][0]["mean_dice"])
    assert f"chosen {comp['chosen']['predict_args']}" in out
    cases = report["variants"]["base"]["cases"]  # the first rule (none) is evaluate's own Dice
    assert [c[0]["WT_dice"] for _, c in sorted(comp["per_case"].items())] == \
        pytest.approx([cases[cid]["WT"]["dice"] for cid in sorted(cases)])


def test_rerun_keeps_finished_folds_and_adds_tta(study):
    root, _, _ = study
    folds = [root / "cv" / f"fold_{i}" for i in range(2)]
    stamps = [(f / "run" / CHECKPOINT).stat().st_mtime_ns for f in folds]
    code, out, err = _learn(root, root / "cv", "--compare-tta")
    assert code == 0, err
    assert "training" not in err and "(base)" not in err  # nothing retrained or predicted again
    assert [(f / "run" / CHECKPOINT).stat().st_mtime_ns for f in folds] == stamps
    report = json.loads((root / "cv" / "learn.json").read_text())
    assert all(f["train"]["reused"] and f["predict"]["base"]["reused"] for f in report["fold_runs"])
    assert all(not f["predict"]["tta"]["reused"] for f in report["fold_runs"])
    assert sorted(report["variants"]["tta"]["cases"]) == IDS and "| tta | 4 |" in out
    for variant, axes in (("base", []), ("tta", [0, 1, 2])):  # masks saved without the ET rule
        settings = json.loads((folds[0] / f"pred_{variant}" / "predictions.json").read_text())["config"]["settings"]
        assert settings["mirror_axes"] == axes and settings["postprocess"]["et_min_mm3"] == 0.0


@pytest.mark.parametrize("extra, flag", [
    (["--folds", "1"], "--folds"), (["--folds", "5"], "--folds"), (["--minutes", "0"], "--minutes"),
    (["--minutes", "-2"], "--minutes"), (["--minutes", "nan"], "--minutes"), (["--minutes", "1e308"], "--minutes"),
    (["--steps", "0"], "--steps"),
    ([], "--minutes"), (["--steps", "4", "--minutes", "1"], "not allowed with"),
    (["--steps", "4", "--predict-args", "--et-min-mm3 500"], "--et-min-mm3"),
    (["--steps", "4", "--predict-args", "--min-component-fraction 0.5"], "--min-component"),
    (["--steps", "4", "--predict-args", "--bogus"], "--predict-args"),
    (["--steps", "4", "--predict-args", "--out x"], "--out"),
    (["--steps", "4", "data.fold=1"], "data.fold"), (["--steps", "4", "optim.lr=-1"], "optim.lr"),
    (["--steps", "4", "schedule.name=plateau"], "plateau"),
])
def test_bad_options_are_one_line_errors(study, tmp_path, extra, flag):
    root, _, _ = study
    argv = ["bench", "learn", "--config", root / "tiny.yaml", "--data", root / "raw.json", "--out", tmp_path / "o",
            *extra]
    if extra[:2] not in (["--folds", "1"], ["--folds", "5"]):
        argv += ["--folds", "2"]
    else:
        argv += ["--steps", "4"]
    code, _, err = _main(*argv)
    lines = err.strip().splitlines()
    assert code == 2 and flag in lines[-1] and "Traceback" not in err, err
    if flag != "not allowed with":  # argparse's usage error has its usage line first
        assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert not (tmp_path / "o").exists()  # nothing written


def test_a_preprocessed_manifest_without_its_raw_hash_is_refused(study, tmp_path):
    """The hash is optional in the schema (hand-made manifests); bench learn needs it to tie the held-out
    cases to the raw files it predicts and scores, so its absence is one line, not a KeyError."""
    root, _, _ = study
    pre = root / "cv" / "preprocessed"
    manifest = json.loads((pre / "preprocessed.json").read_text())
    del manifest["input_manifest_sha256"]
    edited = pre / "without_raw_hash.json"
    edited.write_text(json.dumps(manifest))
    code, _, err = _main("bench", "learn", "--config", root / "tiny.yaml", "--data", edited, "--folds", 2,
                         "--steps", 4, "--out", tmp_path / "o")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(edited) in err and "has no input_manifest_sha256" in err, err
    assert not (tmp_path / "o").exists()


def _fake_run(folder: Path, status: str, checkpoint: bool, sha: str = "abc", budget: float = 0.0,
              val=("case0",)) -> Fold:
    fold = Fold(0, tuple(val), folder)
    (fold.run_dir / "checkpoints").mkdir(parents=True)
    if checkpoint:
        (fold.run_dir / CHECKPOINT).write_bytes(b"x")
    (fold.run_dir / "run.json").write_text(json.dumps({"status": status, "config_sha256": sha, "split": {"val": list(val)},
                                                       "config": {"train": {"time_budget_s": budget}}}))
    return fold


@pytest.mark.parametrize("status, checkpoint, want", [
    ("finished", True, "done"), ("finished (time budget)", True, "done"), ("preempted", True, "resume"),
    ("running", True, "resume"), ("running", False, "fresh"), ("finished", False, "fresh"),
    ("interrupted", True, "resume"),
])
def test_train_state(tmp_path, status, checkpoint, want):
    assert train_state(_fake_run(tmp_path, status, checkpoint), "abc", 0.0) == want


def test_train_state_refuses_other_runs(tmp_path):
    fold = _fake_run(tmp_path / "a", "finished", True)
    for sha, budget in (("other", 0.0), ("abc", 60.0)):
        with pytest.raises(InputError, match="another config, budget or split"):
            train_state(fold, sha, budget)
    with pytest.raises(InputError, match="stopped"):
        train_state(_fake_run(tmp_path / "b", "stopped: loss is not finite", True), "abc", 0.0)
    assert train_state(Fold(0, ("case0",), tmp_path / "none"), "abc", 0.0) == "fresh"


CHILD_THAT_SAVES_ON_CTRL_C = """
import pathlib, signal, sys, time
def stop(*_):
    time.sleep(1.0)  # a checkpoint being written
    pathlib.Path(sys.argv[1]).write_text("saved")
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
print("ready", flush=True)
time.sleep(60)
"""


def test_ctrl_c_waits_for_the_child_to_save(tmp_path):
    """The parent's Ctrl-C must not kill a fold's train child while it checkpoints (subprocess.run would
    after 0.25 s): the child finishes its save and exits 130, then the interrupt goes on up."""
    import signal

    # a shell starts a background job (`make test &`) with SIGINT ignored, and Python then keeps SIG_IGN:
    # give this process the handler a terminal's Ctrl-C meets, for this test only
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_during_wait(tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_during_wait(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import threading

    marker = tmp_path / "saved"
    child = subprocess.Popen([sys.executable, "-c", CHILD_THAT_SAVES_ON_CTRL_C, str(marker)], stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline().strip() == "ready"
    ctrl_c = threading.Timer(0.2, lambda: (os.kill(child.pid, signal.SIGINT), os.kill(os.getpid(), signal.SIGINT)))
    ctrl_c.start()
    with pytest.raises(KeyboardInterrupt):
        wait_through_ctrl_c(child)
    assert child.returncode == 130 and marker.read_text() == "saved"


def test_parts_run_apart_merge_into_the_full_report(study, tmp_path):
    """--only-folds writes one part per fold (reusing the finished folds here); bench merge joins
    them into the report bench learn writes for every fold, recomputed from the parts alone."""
    root, _, _ = study
    code, _, err = _learn(root, root / "cv")  # the full report, base variant only (other tests add tta)
    assert code == 0, err
    full = json.loads((root / "cv" / "learn.json").read_text())
    parts = []
    for fold in (1, 0):
        code, out, err = _learn(root, root / "cv", "--only-folds", str(fold))
        assert code == 0, err
        assert "training" not in err and f"folds {fold} of 2 (a part" in out
        part = json.loads((root / "cv" / f"learn_folds_{fold}.json").read_text())
        assert part["folds_run"] == [fold] and not part["complete"] and part["n_cases"] == 2
        assert sorted(part["variants"]["base"]["cases"]) == sorted(full["fold_runs"][fold]["held_out"])
        parts.append(root / "cv" / f"learn_folds_{fold}.json")
    code, out, err = _main("bench", "merge", *parts, "--out", tmp_path / "merged.json")
    assert code == 0, err
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["complete"] and merged["folds_run"] == [0, 1] and merged["n_cases"] == 4
    assert merged["config_sha256"] == full["config_sha256"] and "2 folds" in out
    got, want = merged["variants"]["base"], full["variants"]["base"]
    assert got["cases"] == want["cases"]
    for key in ("mean", "et_threshold", "components"):  # the same figures, summed in the same order
        _assert_close(got[key], want[key], key)
    assert [f["held_out"] for f in merged["fold_runs"]] == [f["held_out"] for f in full["fold_runs"]]


def _assert_close(got, want, where: str) -> None:
    """Nested dicts and lists equal, floats to 1e-9 (pytest.approx does not nest)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), where
        for key in want:
            _assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), where
    else:
        assert got == want, where
