"""Fault suite: a process killed or starved at a bad moment, then a rerun that completes with results
identical to an uninterrupted run and nothing lost.

Covered elsewhere, not repeated here:
  - kill preprocessing mid-write (SIGKILL while a case's array is being written; rerun equals a
    clean run; a locked output folder is refused): tests/faults/test_preprocess_kill.py;
  - kill training mid-epoch (SIGKILL after a step checkpoint, --resume, bitwise-identical weights,
    optimiser state and loss log), SIGTERM -> checkpoint + exit 75, corrupt latest.pt -> fall back
    to previous.pt with a warning naming the file and replay exactly:
    tests/integration/test_train.py (test_exact_resume_after_sigkill, test_sigterm_saves_and_exits_75,
    test_corrupt_latest_falls_back_and_replays);
  - kill one DDP rank / a hung rank ends the job within the timeout: tests/integration/test_train_ddp.py;
  - SIGTERM to the whole process group with loader workers (torchrun, 2 ranks, and one process)
    mid-step, during validation and during a checkpoint write: tests/faults/test_preempt_workers.py;
  - damaged or missing batch-inference outputs are redone on rerun:
    tests/integration/test_predict_batch.py::test_rerun_skips_verified_cases_and_redoes_damaged_ones.

Here: SIGTERM during validation; SIGKILL in the middle of writing a checkpoint and between its two
renames; a full output disk for preprocessing and batch inference (a real size-limited tmpfs when
this process may mount one, and a simulated ENOSPC everywhere); SIGKILL of batch inference in the
middle of a manifest.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_seg.core.hashing import sha256_file
from brats_seg.engine.checkpoint import checkpoint_dir
from brats_seg.seg3d.config import load_config
from brats_seg.seg3d.trainer import train_3d
from brats_seg.engine.runtime import EXIT_PREEMPTED
from tests.badinput.builders import make_model_run
from tests.train_fixtures import TINY, cli_env, kill_group, make_dataset

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]

# 2 epochs of 3 steps, validation after each epoch on 2 held-out cases, a checkpoint every step
STEPS = ["train.epochs=2", "train.steps_per_epoch=3", "data.fold=0", "train.checkpoint_every_steps=1"]

# The real CLI with a test hook: "mid-write" SIGKILLs the process after half of the checkpoint of
# step K is written to its temp file; "between-renames" SIGKILLs it after latest.pt became
# previous.pt and before the new checkpoint took its place.
WRAPPER = r"""
import os, signal, sys
import torch
mode, kill_step = sys.argv[1], int(sys.argv[2])
state = {"step": None}
real_save, real_replace = torch.save, os.replace
def save(obj, f, *a, **k):
    real_save(obj, f, *a, **k)
    if isinstance(obj, dict) and "progress" in obj:
        state["step"] = obj["progress"]["step"]
        if mode == "mid-write" and state["step"] == kill_step:
            os.truncate(f, os.path.getsize(f) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
def replace(src, dst, *a, **k):
    real_replace(src, dst, *a, **k)
    if mode == "between-renames" and state["step"] == kill_step and str(dst).endswith("previous.pt"):
        os.kill(os.getpid(), signal.SIGKILL)
torch.save, os.replace = save, replace
from brats_seg.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("faults_data"), n_cases=4)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert train_3d(load_config(None, TINY + STEPS), data, out, False) == 0
    return out


def _latest(run_dir: Path) -> dict:
    return torch.load(checkpoint_dir(run_dir) / "latest.pt", weights_only=True)


def _losses(run_dir: Path) -> list[float]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in rows if r["kind"] == "step"]


def _assert_same_run(a: Path, b: Path) -> None:
    """Bitwise-identical final weights and optimiser state, the same step-loss log, the same best.pt."""
    ca, cb = _latest(a), _latest(b)
    assert ca["progress"]["step"] == cb["progress"]["step"] == 6
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), f"weights differ at {k}"
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert _losses(a) == _losses(b)
    ba = torch.load(checkpoint_dir(a) / "best.pt", weights_only=True)
    bb = torch.load(checkpoint_dir(b) / "best.pt", weights_only=True)
    assert ba["metrics"] == bb["metrics"]
    assert all(torch.equal(ba["model"][k], bb["model"][k]) for k in ba["model"])
    assert json.loads((b / "run.json").read_text())["status"] == "finished"


def _train_args(data: Path, out: Path, *flags: str) -> list[str]:
    config = data.parent / "train.yaml"
    config.write_text("task: 3d\n")
    return ["train", "--config", str(config), "--data", str(data), "--out", str(out), *flags, *TINY, *STEPS]


def _start_wrapped(mode: str, kill_step: int, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRAPPER, mode, str(kill_step), *argv], cwd=REPO, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


# ---------------------------------------------------------------------------------------------- training

def test_sigterm_during_validation_then_resume_is_exact(data, straight, tmp_path, monkeypatch, capsys):
    """SIGTERM arrives while epoch 1 validates: validation and the epoch checkpoint finish, the stop
    vote that opens epoch 2 stops the run there (no further step, no second checkpoint of the same
    state), exit 75; --resume ends bitwise where a straight run ends. In-process, so the signal lands inside validation for certain
    (the real CLI under SIGTERM: tests/integration/test_train.py::test_sigterm_saves_and_exits_75)."""
    import brats_seg.seg3d.trainer as loop

    real_validate, seen = loop.validate, []

    def validate(*args, **kwargs):
        if not seen:
            os.kill(os.getpid(), signal.SIGTERM)  # the StopFlag handler is installed: it only sets a flag
        result = real_validate(*args, **kwargs)
        seen.append(signal.getsignal(signal.SIGTERM).__self__.requested)
        return result

    monkeypatch.setattr(loop, "validate", validate)
    out = tmp_path / "run"
    assert train_3d(load_config(None, TINY + STEPS), data, out, False) == EXIT_PREEMPTED
    assert seen == [True], "validation ran once, with the stop requested while it ran"
    printed = capsys.readouterr().out
    assert "stopped by SIGTERM at step 3" in printed and printed.count("checkpoint: step 3 ") == 1
    assert _latest(out)["progress"]["step"] == 3
    assert json.loads((out / "run.json").read_text())["status"] == "preempted"
    records = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch" and "val_dice_mean" in r] == [1]  # not lost
    monkeypatch.undo()
    assert train_3d(load_config(None, TINY + STEPS), data, out, True) == 0
    assert "at step 3" in capsys.readouterr().out
    _assert_same_run(straight, out)


def test_sigkill_while_writing_checkpoints_then_resume_is_exact(data, straight, tmp_path, capsys):
    """Killed twice while a checkpoint is being written, resumed each time:
    1. in the middle of writing step 2's checkpoint (half of it in the temp file): latest.pt is still
       the complete step-1 checkpoint and the resume starts there;
    2. (in that resumed run) between the two renames of step 5's checkpoint: latest.pt has become
       previous.pt and the new one is not in place yet; the resume falls back to previous.pt (step 4).
    No partial file ever sits under a final name, and the run ends bitwise where a straight run ends."""
    out = tmp_path / "run"
    folder = checkpoint_dir(out)

    def killed_while_saving(mode: str, step: int, *flags: str) -> None:
        proc = _start_wrapped(mode, step, _train_args(data, out, *flags))
        try:
            _, stderr = proc.communicate(timeout=180)
        finally:
            kill_group(proc)
        assert proc.returncode == -signal.SIGKILL, stderr[-3000:]
        assert [p for p in folder.iterdir() if p.name.startswith(".") and ".tmp" in p.name], "no temp file left?"
        for name in ("latest.pt", "previous.pt", "best.pt"):
            if (folder / name).exists():
                torch.load(folder / name, weights_only=True)  # every final name holds a complete file

    killed_while_saving("mid-write", 2)
    assert _latest(out)["progress"]["step"] == 1
    killed_while_saving("between-renames", 5, "--resume")
    assert not (folder / "latest.pt").exists()
    assert torch.load(folder / "previous.pt", weights_only=True)["progress"]["step"] == 4
    capsys.readouterr()
    assert train_3d(load_config(None, TINY + STEPS), data, out, True) == 0  # the last resume in-process
    assert f"resumed from {folder / 'previous.pt'} at step 4" in capsys.readouterr().out
    _assert_same_run(straight, out)
    runs = json.loads((out / "run.json").read_text())["resumed"]
    assert [r["step"] for r in runs] == [1, 4]


# ---------------------------------------------------------------------------------------------- disk full

@pytest.fixture(scope="module")
def raw3(tmp_path_factory) -> Path:
    """3 synthetic phantoms (32x32x24) and their raw manifest."""
    from brats_seg.ingest.stage import ingest
    from brats_seg.synth.phantoms import synthesize_dataset

    root = tmp_path_factory.mktemp("faults_raw")
    synthesize_dataset(root / "src", 3, 0, (32, 32, 24))
    ingest([root / "src"], root / "raw.json")
    return root / "raw.json"


@pytest.fixture(scope="module")
def model_run(tmp_path_factory) -> Path:
    return make_model_run(tmp_path_factory.mktemp("faults_model") / "run")


@pytest.fixture(scope="module")
def clean_preprocess(raw3, tmp_path_factory) -> Path:
    from brats_seg.preprocess.case import PreprocessConfig
    from brats_seg.preprocess.stage import run_preprocess

    out = tmp_path_factory.mktemp("clean_pre") / "pre"
    assert run_preprocess(raw3, out, PreprocessConfig(), workers=1)["failed"] == 0
    return out


@pytest.fixture(scope="module")
def clean_predict(raw3, model_run, tmp_path_factory) -> Path:
    from brats_seg.infer.batch import BatchOptions, predict_manifest
    from brats_seg.infer.segmenter import Segmenter

    out = tmp_path_factory.mktemp("clean_pred") / "pred"
    predict_manifest(Segmenter.from_run(model_run, threads=1), raw3, out, opts=BatchOptions(probabilities=True))
    return out


def _files(folder: Path) -> dict[str, bytes]:
    """Every visible output file (no locks, no hidden temp files) -> bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def _states(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def _manifest_core(path: Path) -> dict:
    m = json.loads(path.read_text())
    m.pop("created_at")
    m.pop("timings", None)
    for e in m["cases"]:
        e.pop("timings", None)
    return m


def _same_outputs(clean: Path, rerun: Path, manifest: str) -> None:
    a, b = _files(clean), _files(rerun)
    assert sorted(a) == sorted(b)
    for rel in a:
        if rel == manifest or rel.startswith("cases/") and rel.endswith(".json") and manifest == "predictions.json":
            continue  # holds created_at / timings
        assert a[rel] == b[rel], f"{rel} differs from the uninterrupted run"
    assert _manifest_core(clean / manifest) == _manifest_core(rerun / manifest)


def _complete_preprocessed_cases(out: Path) -> list[str]:
    """Cases whose entry.json exists; asserts each array it lists verifies (nothing half-written)."""
    done = []
    for entry_path in sorted((out / "cases").glob("*/entry.json")):
        entry = json.loads(entry_path.read_text())
        for key, digest in entry["sha256"].items():
            assert sha256_file(out / entry[key]) == digest, f"{entry_path}: {key} does not verify"
        done.append(entry["id"])
    for npy in (out / "cases").rglob("*.npy"):
        if not npy.name.startswith("."):
            np.load(npy)  # no truncated array under a final name
    return done


def _complete_predicted_cases(out: Path) -> list[str]:
    done = []
    for side in sorted((out / "cases").glob("*.json")):
        entry = json.loads(side.read_text())["entry"]
        assert sha256_file(out / entry["mask"]) == entry["sha256"]
        assert sha256_file(out / entry["probabilities"]) == entry["probabilities_sha256"]
        done.append(entry["id"])
    for nii in (out / "masks").glob("*.nii.gz"):
        if not nii.name.startswith("."):
            np.asarray(nib.load(str(nii)).dataobj)  # complete file
    return done


def _need(folder: Path) -> int:
    """Bytes a tmpfs needs for these files (whole 4 KiB pages)."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in folder.rglob("*") if p.is_file())


@contextlib.contextmanager
def _tmpfs(path: Path, size: int):
    """A size-limited tmpfs at `path`, remountable bigger; skips when this process may not mount."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); "
                    "the simulated-ENOSPC tests cover a full disk")

    def resize(new_size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new_size}", str(path)], check=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_preprocess_on_a_full_tmpfs_then_rerun_after_freeing_space(raw3, clean_preprocess, tmp_path, run_cli):
    case0 = _need(clean_preprocess / "cases" / "Synth_0000")
    disk = tmp_path / "disk"
    with _tmpfs(disk, case0 + 64 * 1024) as resize:  # case 0 fits, case 1's image does not
        out = disk / "pre"
        argv = ["preprocess", raw3, "--out", out, "--workers", "1"]
        code, err = _run_failing(run_cli, argv)
        assert code != 0 and "No space left on device" in err, err
        assert _complete_preprocessed_cases(out) == ["Synth_0000"]
        assert not (out / "preprocessed.json").exists()
        kept = {rel: st for rel, st in _states(out).items() if "Synth_0000" in rel}
        resize(64 * 1024 * 1024)  # space freed
        code, _, err = run_cli(*argv)
        assert code == 0, err
        assert "preprocess: 2 done, 1 skipped, 0 failed" in err
        after = _states(out)
        assert all(after[rel] == kept[rel] for rel in kept), "the case finished before the disk filled was rewritten"
        _same_outputs(clean_preprocess, out, "preprocessed.json")


def test_predict_on_a_full_tmpfs_then_rerun_after_freeing_space(raw3, model_run, clean_predict, tmp_path, run_cli):
    one_case = sum(-(-p.stat().st_size // 4096) * 4096 for p in clean_predict.rglob("Synth_0000*") if p.is_file())
    disk = tmp_path / "disk"
    with _tmpfs(disk, one_case + 64 * 1024) as resize:  # case 0 fits, case 1's probabilities do not
        out = disk / "pred"
        argv = ["predict", "--model", model_run, "--manifest", raw3, "--out", out, "--threads", "1", "--probabilities"]
        code, err = _run_failing(run_cli, argv)
        assert code != 0 and "No space left on device" in err, err
        assert _complete_predicted_cases(out) == ["Synth_0000"]
        assert not (out / "predictions.json").exists()
        kept = {rel: st for rel, st in _states(out).items() if "Synth_0000" in rel}
        resize(64 * 1024 * 1024)
        code, _, err = run_cli(*argv)
        assert code == 0, err
        assert "predict: 2 done, 1 skipped, 0 failed" in err
        after = _states(out)
        assert all(after[rel] == kept[rel] for rel in kept)
        _same_outputs(clean_predict, out, "predictions.json")


class _FullDisk:
    """Simulated ENOSPC: the N-th write of an output file writes part of it, then fails like a full disk."""

    def __init__(self, fail_at: int):
        self.fail_at, self.calls = fail_at, 0

    def hit(self) -> bool:
        self.calls += 1
        return self.calls >= self.fail_at

    @staticmethod
    def error(path) -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _full_disk_preprocess(monkeypatch, fail_at: int) -> None:
    """The fail_at-th array written fills the disk: a few bytes land in its temp file, then ENOSPC."""
    from brats_seg.preprocess import case as case_module

    disk, real_init = _FullDisk(fail_at), case_module._HashingWriter.__init__

    def init(self, raw):
        real_init(self, raw)
        if disk.hit():
            def write(data):
                raw.write(b"\x93NUMPY partial")
                raise disk.error(getattr(raw, "name", "array"))
            self.write = write

    monkeypatch.setattr(case_module._HashingWriter, "__init__", init)


def _full_disk_predict(monkeypatch, fail_at: int) -> None:
    disk, real = _FullDisk(fail_at), nib.save

    def save(img, filename, *a, **k):
        if disk.hit():
            Path(filename).write_bytes(b"\x1f\x8b partial")
            raise disk.error(filename)
        return real(img, filename, *a, **k)

    monkeypatch.setattr(nib, "save", save)


def _run_failing(run_cli, argv) -> tuple[int | None, str]:
    """Exit code and stderr, or (None, the exception) when it escaped main (a traceback for a user)."""
    try:
        code, _, err = run_cli(*argv)
        return code, err
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("stage", ["preprocess", "predict"])
def test_simulated_enospc_keeps_earlier_outputs_and_rerun_completes(raw3, model_run, clean_preprocess, clean_predict,
                                                                     tmp_path, run_cli, monkeypatch, stage):
    """Disk full at case 1 (preprocess: its seg array; predict: its probabilities): case 0 stays
    complete and untouched, nothing half-written sits under a final name, and once space is back a
    rerun redoes only the rest and equals the uninterrupted run."""
    out = tmp_path / stage
    if stage == "preprocess":
        argv = ["preprocess", raw3, "--out", out, "--workers", "1"]
        clean, manifest = clean_preprocess, "preprocessed.json"
        _full_disk_preprocess(monkeypatch, fail_at=5)  # arrays: 0 image, seg, fg; 1 image, seg <- full
        complete = _complete_preprocessed_cases
    else:
        argv = ["predict", "--model", model_run, "--manifest", raw3, "--out", out, "--threads", "1", "--probabilities"]
        clean, manifest, complete = clean_predict, "predictions.json", _complete_predicted_cases
        _full_disk_predict(monkeypatch, fail_at=4)  # files: 0 mask, probs; 1 mask, probs <- full
    code, err = _run_failing(run_cli, argv)
    assert code != 0, err
    assert complete(out) == ["Synth_0000"]
    assert not (out / manifest).exists()
    kept = {rel: st for rel, st in _states(out).items() if "Synth_0000" in rel}  # the finished case
    monkeypatch.undo()  # space freed
    code, _, err = run_cli(*argv)
    assert code == 0, err
    assert f"{stage}: 2 done, 1 skipped, 0 failed" in err
    after = _states(out)
    assert all(after[rel] == kept[rel] for rel in kept)
    _same_outputs(clean, out, manifest)


@pytest.mark.parametrize("stage", ["preprocess", "predict"])
def test_full_disk_is_reported_in_one_line(raw3, model_run, tmp_path, run_cli, monkeypatch, stage):
    """ENOSPC is the user's problem (free space), not a bug: a non-zero exit and one `error:` line
    naming the file that could not be written and saying the disk is full; no traceback."""
    out = tmp_path / stage
    if stage == "preprocess":
        _full_disk_preprocess(monkeypatch, fail_at=1)
        argv = ["preprocess", raw3, "--out", out, "--workers", "1"]
    else:
        _full_disk_predict(monkeypatch, fail_at=1)
        argv = ["predict", "--model", model_run, "--manifest", raw3, "--out", out, "--threads", "1"]
    code, err = _run_failing(run_cli, argv)
    assert code is not None, f"the disk-full error escaped the CLI as a traceback: {err}"
    assert code != 0
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors and all("No space left on device" in line for line in errors), err
    assert str(out) in errors[0], errors[0]


# ---------------------------------------------------------------------------------------------- batch inference

def _sidecars(out: Path) -> list[str]:
    """Case ids with a finished sidecar (cases/<id>.json; hidden temp files excluded)."""
    return sorted(p.stem for p in (out / "cases").glob("*.json") if not p.name.startswith("."))


def test_sigkill_batch_inference_mid_manifest_then_rerun(tmp_path, model_run, run_cli):
    """SIGKILL while predict --manifest is between cases: the rerun skips the finished cases (their
    masks untouched: same inode and mtime), does the rest, and every mask equals an uninterrupted run."""
    from brats_seg.ingest.stage import ingest
    from brats_seg.synth.phantoms import synthesize_dataset

    synthesize_dataset(tmp_path / "src", 6, 1, (32, 32, 24))
    raw = tmp_path / "raw.json"
    ingest([tmp_path / "src"], raw)
    opts = ["--model", model_run, "--manifest", raw, "--threads", "1", "--tta"]  # --tta: ~8x longer per case
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    code, _, err = run_cli("predict", *opts, "--out", clean)
    assert code == 0, err

    proc = subprocess.Popen([sys.executable, "-m", "brats_seg", "predict", *map(str, opts), "--out", str(killed)],
                            cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if len(_sidecars(killed)) >= 2:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=30)
    finally:
        kill_group(proc)
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"
    finished = _sidecars(killed)
    assert 2 <= len(finished) < 6 and not (killed / "predictions.json").exists()
    before = {c: (p.stat().st_ino, p.stat().st_mtime_ns)
              for c in finished for p in [killed / "masks" / f"{c}.nii.gz"]}

    code, _, err = run_cli("predict", *opts, "--out", killed)
    assert code == 0, err
    assert f"predict: {6 - len(finished)} done, {len(finished)} skipped, 0 failed" in err
    for c, state in before.items():
        p = killed / "masks" / f"{c}.nii.gz"
        assert (p.stat().st_ino, p.stat().st_mtime_ns) == state, f"{c}'s finished mask was rewritten"
    masks = sorted(p.name for p in (clean / "masks").iterdir())
    assert masks == sorted(p.name for p in (killed / "masks").iterdir())  # the masks and their case JSONs
    assert len([m for m in masks if m.endswith(".nii.gz")]) == 6 and len(masks) == 12
    for name in masks:
        assert (clean / "masks" / name).read_bytes() == (killed / "masks" / name).read_bytes(), name
    assert not [p for p in (killed / "masks").iterdir() if p.name.startswith(".")], "temp files left"
    assert _manifest_core(clean / "predictions.json") == _manifest_core(killed / "predictions.json")
