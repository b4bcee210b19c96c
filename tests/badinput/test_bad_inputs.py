"""The bad-input suite: broken manifests, configs, checkpoints, command-line values, image files and
shard sets, each through the real CLI entry point. Every one must end with exit code 2 and exactly
one stderr line `error: <file or case>: <what; expected>`, and must not touch anything already
written: every file under the workspace (inputs, manifests, preprocessed arrays, masks, the training
run, its checkpoints) is snapshotted (bytes and mtime, links, folders) before the call and compared
after, and fresh output paths must not appear.

The builders live in tests/badinput/builders.py (one function per kind of broken input). Already
covered elsewhere, not repeated here:
  - tests/unit/test_ingest_errors.py: ~30 broken case folders at ingestion (missing, ambiguous,
    empty, truncated, garbage, 4D, NaN/Inf, shape/spacing/origin/direction/qform-sform mismatches,
    label maps: values, float, mixed conventions, another grid; symlink out of the dataset root,
    duplicate ids across sources) and "a failed ingestion leaves an existing manifest untouched";
  - tests/integration/test_train.py::test_cli_bad_input_is_one_line_exit_2 (unknown override key,
    unknown task, patch size, missing data manifest);
  - tests/integration/test_predict_batch.py::test_cli_input_errors_are_one_line (predict's input
    options) and ::test_cli_missing_checkpoint;
  - tests/faults/test_preprocess_kill.py::test_second_run_on_the_same_output_and_shard_is_refused.

One bad case inside a batch (preprocess, predict --manifest) is not a whole-command error: the
README's batch contract is exit 1, the case listed under `rejected` with its error line, the other
cases done or skipped. test_one_bad_case_in_a_batch checks that contract, including containment
(`..`, absolute paths, symlinks out of the root pointing at perfectly valid files).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.badinput.builders import (BAD_CASES, BAD_INPUTS, BATCH_COMMANDS, CASES, build_workspace, changes,
                                     ckpt_plain_pickle, config_not_yaml, copy_workspace, pre_array_garbage,
                                     raw_symlink_out_of_root, snapshot)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("badinput") / "ws")


@pytest.fixture
def ws(base, tmp_path) -> Path:
    return copy_workspace(base, tmp_path / "ws")


def one_error_line(code: int, err: str) -> str:
    """Exit code 2 and exactly one non-empty stderr line, starting 'error: ', no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err[-3000:]
    assert code == 2, f"expected exit code 2, got {code}; stderr: {err[-2000:]!r}"
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def _without(snap: dict, scratch: Path | None, root: Path) -> dict:
    if scratch is None:
        return snap
    prefix = scratch.relative_to(root).as_posix()
    return {k: v for k, v in snap.items() if k != prefix and not k.startswith(prefix + "/")}


def _run_in_process(run_cli, argv) -> tuple[int, str, str]:
    try:
        return run_cli(*argv)
    except Exception as exc:  # an uncaught exception is what a user sees as a traceback
        pytest.fail(f"uncaught {type(exc).__name__} (a traceback, not one error line): {exc}"[:2000])


@pytest.mark.parametrize("build", BAD_INPUTS, ids=lambda f: f.__name__)
def test_bad_input_exits_2_with_one_line_and_touches_nothing(ws, run_cli, build):
    bad = build(ws)
    before = _without(snapshot(ws), bad.scratch, ws)
    code, _, err = _run_in_process(run_cli, bad.argv)
    line = one_error_line(code, err)
    for name in bad.names:
        assert name in line, f"the error line does not name {name!r}: {line!r}"
    for word in bad.says:
        assert word in line, f"the error line does not say {word!r}: {line!r}"
    assert changes(before, _without(snapshot(ws), bad.scratch, ws)) == []
    if bad.output is not None:
        assert not bad.output.exists(), f"{bad.output} was created by a failing command"


def _subprocess(argv, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "brats_seg", *[str(a) for a in argv]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("build", [config_not_yaml, ckpt_plain_pickle, pre_array_garbage, raw_symlink_out_of_root],
                         ids=lambda f: f.__name__)
def test_bad_input_through_a_real_subprocess(ws, build):
    """What a user sees: no traceback and no library warning, exactly one line, exit 2. (Truncated files
    and invalid manifests in a subprocess: tests/unit/test_ingest_errors.py.)"""
    bad = build(ws)
    before = _without(snapshot(ws), bad.scratch, ws)
    proc = _subprocess(bad.argv, ws)
    line = one_error_line(proc.returncode, proc.stderr)
    for name in bad.names:
        assert name in line
    assert changes(before, _without(snapshot(ws), bad.scratch, ws)) == []


def test_there_are_at_least_twenty_kinds():
    assert len(BAD_INPUTS) >= 20 and len({b.__name__ for b in BAD_INPUTS}) == len(BAD_INPUTS)


# ---------------------------------------------------------------------------------------------- one bad case in a batch

def _entries(manifest: dict) -> dict:
    return {e["id"]: {k: v for k, v in e.items() if k != "timings"} for e in manifest["cases"]}


@pytest.mark.parametrize("command", sorted(BATCH_COMMANDS))
@pytest.mark.parametrize("build", BAD_CASES, ids=lambda f: f.__name__)
def test_one_bad_case_in_a_batch(ws, run_cli, build, command):
    """The bad case is refused with one line naming it, listed under `rejected`; exit 1; the other
    cases are done exactly as before; nothing already written changes but the batch's manifest."""
    bad = build(ws, BATCH_COMMANDS[command])
    manifest_path = bad.out_dir / bad.manifest
    old_manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    before = snapshot(ws)
    code, _, err = _run_in_process(run_cli, bad.argv)
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    for name in bad.names:
        assert name in errors[0], f"the error line does not name {name!r}: {errors[0]!r}"
    for word in bad.says:
        assert word in errors[0], errors[0]
    assert code == 1, f"batch with one failed case: expected exit 1, got {code}; {err}"
    assert "1 failed" in err.splitlines()[-1]

    manifest = json.loads(manifest_path.read_text())
    assert manifest["rejected"] == [{"id": bad.case, "reason": errors[0]}]
    good = [c for c in CASES if c != bad.case]
    assert sorted(_entries(manifest)) == good
    if old_manifest is not None:  # an existing output folder: the good cases are skipped, unchanged
        assert all(_entries(manifest)[c] == _entries(old_manifest)[c] for c in good)
    else:  # a fresh folder: the good cases' masks are those of the workspace's earlier run
        for c in good:
            mask = f"masks/{c}.nii.gz"
            assert (bad.out_dir / mask).read_bytes() == (ws / "pred" / mask).read_bytes()
        assert not (bad.out_dir / "masks" / f"{bad.case}.nii.gz").exists()

    rel_out = bad.out_dir.relative_to(ws).as_posix()

    def allowed(change: str) -> bool:
        """The batch's manifest and lock files change; in a fresh output folder anything may appear."""
        rel = change.split(" ")[-1]
        return (rel == f"{rel_out}/{bad.manifest}" or rel.startswith(f"{rel_out}/.locks")
                or (old_manifest is None and (rel == rel_out or rel.startswith(rel_out + "/"))))

    assert [c for c in changes(before, snapshot(ws)) if not allowed(c)] == []
