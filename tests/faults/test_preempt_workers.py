"""Pre-emption with loader workers (data.num_workers=1), at any moment, with real processes.

SIGTERM goes to the whole process group (os.killpg), as SLURM's --signal does to a job step and as
torchrun's agent does on shutdown: the launcher, every rank and every loader worker get it. The
test-only pause (brats_seg.engine.runtime.pause_point, BRATS_SEG_TEST_PAUSE) holds a phase for a few
seconds and leaves a marker file when it is entered, so the signal lands inside it for certain:
  - mid-step (gradients computed, not yet applied), during validation, during a checkpoint write;
  - after each: every process of the group exited, every rank exited 75, run.json "preempted", a
    complete checkpoint at the expected step (the work in hand was finished, never lost);
  - the same command (--auto-resume) continues each time; the last one finishes, and its final weights
    and step losses equal an uninterrupted run's bit for bit.
torchrun with 2 gloo CPU ranks, and one single-process run. Each pre-empted run is the restart of the
one before, so one chain covers the three moments and every restart.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from brats_seg.engine.runtime import EXIT_INTERRUPTED, EXIT_PREEMPTED, PAUSE_DIR_ENV, PAUSE_ENV
from tests.train_fixtures import REPO, TINY, cli_env, kill_group, make_dataset

pytestmark = pytest.mark.ddp
RANK_EXIT = Path(__file__).with_name("rank_exit.py")
PAUSE_S = 4
# 2 ranks share 6 steps per epoch (distributed.scaling=samples): 3 steps each, 2 epochs, 6 in all;
# validation after each epoch; a checkpoint after every step.
DDP_STEPS = [*TINY, "data.num_workers=1", "train.epochs=2", "train.steps_per_epoch=6", "data.fold=0",
             "train.checkpoint_every_steps=1", "distributed.timeout_s=30"]
FINAL = 6


def _args(data: Path, out: Path, steps: list[str]) -> list[str]:
    config = data.parent / "train.yaml"
    config.write_text("task: 3d\n")
    return ["train", "--config", str(config), "--data", str(data), "--out", str(out), "--auto-resume", *steps]


def _start(cmd: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _torchrun(data: Path, out: Path, exits: Path, pause: str | None = None, markers: Path | None = None):
    env = dict(cli_env(), RANK_EXIT_DIR=str(exits))
    if pause:
        env.update({PAUSE_ENV: f"{pause}:{PAUSE_S}", PAUSE_DIR_ENV: str(markers)})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(RANK_EXIT),
           *_args(data, out, DDP_STEPS)]
    return _start(cmd, env)


def _alive_in_group(pgid: int) -> list[int]:
    """Processes (not zombies) of process group `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def _wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 150) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_group(proc)
            out, err = proc.communicate()
            raise AssertionError(f"{marker.name} never entered (exit {proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.05)


def _finish(proc: subprocess.Popen, timeout: float = 150) -> tuple[str, str]:
    """(stdout, stderr) once the process has exited; the group is killed only on a timeout (the
    callers check that nothing of the group is left)."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(f"still running after {timeout} s:\n{out[-2000:]}\n{err[-3000:]}")


def _latest(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "latest.pt", weights_only=True)


def _losses(run: Path) -> list[float]:
    rows = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in rows if r["kind"] == "step"]


def _assert_same_weights(a: Path, b: Path) -> None:
    ca, cb = _latest(a), _latest(b)
    assert ca["progress"]["step"] == cb["progress"]["step"] == FINAL
    assert ca["model"].keys() == cb["model"].keys()
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), f"weights differ at {key}"
    assert _losses(a) == _losses(b)


def _clean_stderr(err: str) -> None:
    """No rank failed, no worker died, no DDP gradient-bucket copy warning.

    brats-seg's own errors are lines that start with "error:". A plain substring would also match
    torchrun's agent when it aborts at exit after a SIGINT ("Fatal Python error: Aborted", from a
    thread of torch elastic left joinable); that is the launcher's, after the ranks have exited,
    and the rank exit codes (rank_exit.py) already prove each rank stopped as it should."""
    ours = [line for line in err.splitlines() if line.startswith("error:")]
    assert not ours, f"{ours[0]!r} in stderr:\n{err[-3000:]}"
    for bad in ("DataLoader worker", "a collective failed", "Grad strides do not match", "[rank0]:",
                "[rank1]:"):
        assert bad not in err, f"{bad!r} in stderr:\n{err[-3000:]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("preempt_data"), n_cases=4)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> tuple[Path, str]:
    """The uninterrupted 2-rank run (run folder, stderr)."""
    root = tmp_path_factory.mktemp("preempt_ref")
    (root / "exits").mkdir()
    proc = _torchrun(data, root / "run", root / "exits")
    out, err = _finish(proc)
    assert proc.returncode == 0, err[-3000:]
    return root / "run", err


def test_two_ranks_with_workers_have_no_bucket_copy_warning(reference):
    run, err = reference
    _clean_stderr(err)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["world_size"] == 2 and info["config"]["data"]["num_workers"] == 1


def _preempted_at(data: Path, run: Path, tmp: Path, pause: str, marker: str,
                  signum: int = signal.SIGTERM) -> tuple[int, str]:
    """One run (a restart when `run` holds a checkpoint) held at `pause`, SIGTERM (or SIGINT: Ctrl-C)
    to its process group once `marker` appears; asserts the pre-emption contract, returns
    (checkpoint step, stdout)."""
    code, by, status = ((EXIT_INTERRUPTED, "Ctrl-C", "interrupted") if signum == signal.SIGINT
                        else (EXIT_PREEMPTED, "SIGTERM", "preempted"))
    exits, markers = tmp / f"exits-{marker}", tmp / f"markers-{marker}"
    exits.mkdir()
    markers.mkdir()
    proc = _torchrun(data, run, exits, pause, markers)
    _wait_for(markers / marker, proc)
    os.killpg(proc.pid, signum)
    out, err = _finish(proc)
    left = _alive_in_group(proc.pid)
    kill_group(proc)
    assert not left, f"processes {left} (a rank or a loader worker) outlived the job"
    codes = {p.name: p.read_text().strip() for p in exits.iterdir()}
    assert codes == {"rank0": str(code), "rank1": str(code)}, (codes, err[-3000:])
    _clean_stderr(err)
    assert json.loads((run / "run.json").read_text())["status"] == status  # launch scripts requeue "preempted"
    step = _latest(run)["progress"]["step"]  # readable with weights_only=True
    assert f"stopped by {by} at step {step}" in out
    return step, out


def test_sigterm_to_the_group_at_each_moment_then_resume_is_exact(data, reference, tmp_path):
    run = tmp_path / "run"
    # 1. mid-step 2: the step completes, the ranks agree to stop, rank 0 saves step 2
    step, _ = _preempted_at(data, run, tmp_path, "step@2", "step-rank1")
    assert step == 2
    # 2. (restart) during the validation after step 3: it completes and is recorded, the epoch
    #    checkpoint is written, and the vote that opens epoch 2 stops the run without another step
    step, out = _preempted_at(data, run, tmp_path, "validation@3", "validation-rank0")
    assert "resumed from" in out and "at step 2" in out and step == 3
    records = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch" and "val_dice_mean" in r] == [1]
    # 3. (restart) while rank 0 writes the step-4 checkpoint: the write completes, one more step,
    #    then the stop and the step-5 checkpoint
    step, out = _preempted_at(data, run, tmp_path, "checkpoint@4", "checkpoint-rank0")
    assert "at step 3" in out and step == 5
    assert torch.load(run / "checkpoints" / "previous.pt", weights_only=True)["progress"]["step"] == 4
    # 4. the same command once more finishes where the uninterrupted run did, bit for bit
    exits = tmp_path / "exits-final"
    exits.mkdir()
    proc = _torchrun(data, run, exits)
    out, err = _finish(proc)
    assert proc.returncode == 0, err[-3000:]
    assert "at step 5" in out
    _assert_same_weights(reference[0], run)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and [r["step"] for r in info["resumed"]] == [2, 3, 5]


def test_ctrl_c_to_a_torchrun_job_checkpoints_every_rank_then_resumes_exactly(data, reference, tmp_path):
    """One Ctrl-C: SIGINT to the group (agent and ranks), which torchrun's agent forwards to the
    ranks once more; the step ends, rank 0 saves, both ranks exit 130, and the same command
    finishes where the uninterrupted run did."""
    run = tmp_path / "run"
    step, _ = _preempted_at(data, run, tmp_path, "step@2", "step-rank1", signal.SIGINT)
    assert step == 2
    exits = tmp_path / "exits-final"
    exits.mkdir()
    proc = _torchrun(data, run, exits)
    out, err = _finish(proc)
    assert proc.returncode == 0, err[-3000:]
    _assert_same_weights(reference[0], run)


SINGLE_STEPS = [*TINY, "data.num_workers=1", "train.epochs=2", "train.steps_per_epoch=3", "data.fold=0"]


def _single_run(data: Path, run: Path, markers: Path, pause_s: float) -> subprocess.Popen:
    """`brats-seg train` (one process, one loader worker) held inside step 2 for `pause_s`."""
    markers.mkdir()
    env = dict(cli_env(), **{PAUSE_ENV: f"step@2:{pause_s}", PAUSE_DIR_ENV: str(markers)})
    proc = _start([sys.executable, "-m", "brats_seg", *_args(data, run, SINGLE_STEPS)], env)
    _wait_for(markers / "step-rank0", proc)
    return proc


def _ended(proc: subprocess.Popen) -> tuple[str, str]:
    """(stdout, stderr) after the run exited, with nothing of its group (the worker) left."""
    out, err = _finish(proc)
    left = _alive_in_group(proc.pid)
    kill_group(proc)
    assert not left, f"processes {left} (the loader worker) outlived the run"
    return out, err


@pytest.mark.parametrize("signum,code,by,status", [(signal.SIGTERM, EXIT_PREEMPTED, "SIGTERM", "preempted"),
                                                   (signal.SIGINT, EXIT_INTERRUPTED, "Ctrl-C", "interrupted")])
def test_single_process_stop_with_a_worker_then_resume_is_exact(data, tmp_path, signum, code, by, status):
    """No torchrun: `brats-seg train` with one loader worker, SIGTERM (pre-emption) or a first
    SIGINT (Ctrl-C) to its group mid-step 2: the step ends, a checkpoint, exit 75 or 130; the same
    command resumes to the uninterrupted run's weights."""
    from brats_seg.seg3d.config import load_config
    from brats_seg.seg3d.trainer import train_3d

    straight = tmp_path / "straight"
    assert train_3d(load_config(None, [*SINGLE_STEPS, "data.num_workers=0"]), data, straight, False) == 0
    run = tmp_path / "run"
    proc = _single_run(data, run, tmp_path / "markers", PAUSE_S)
    os.killpg(proc.pid, signum)
    out, err = _ended(proc)
    assert proc.returncode == code, err[-3000:]
    _clean_stderr(err)
    assert "Traceback" not in err and f"stopped by {by} at step 2" in out and f"exit {code}" in out
    assert _latest(run)["progress"]["step"] == 2
    assert json.loads((run / "run.json").read_text())["status"] == status
    proc = _start([sys.executable, "-m", "brats_seg", *_args(data, run, SINGLE_STEPS)], cli_env())
    out, err = _finish(proc)
    assert proc.returncode == 0, err[-3000:]
    assert "at step 2" in out
    _assert_same_weights(straight, run)


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(data, tmp_path):
    proc = _single_run(data, tmp_path / "run", tmp_path / "markers", 3 * PAUSE_S)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(1.5)  # past DUPLICATE_SIGINT_S: a second Ctrl-C, not the first one forwarded
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = _ended(proc)
    assert proc.returncode == EXIT_INTERRUPTED and time.monotonic() - started < 2 * PAUSE_S, err[-3000:]
    assert "Traceback" not in err and "stopped by Ctrl-C" not in out  # no step-2 checkpoint: it stopped at once
