"""Distributed training under torchrun with 2 CPU processes (gloo): the loss falls, rank 0 alone
writes, DDP copies no gradient bucket, and a rank killed mid-run makes the launcher exit non-zero
within the timeout (SIGTERM to the whole job with loader workers: tests/faults/test_preempt_workers.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.train_fixtures import REPO, TINY, cli_env, kill_group, make_dataset, wait_for_line

pytestmark = pytest.mark.ddp
PG_TIMEOUT_S = 20


def _torchrun(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    config = data.parent / "train.yaml"
    config.write_text("task: 3d\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "brats_seg", "train", "--config", str(config), "--data", str(data), "--out", str(out),
           *TINY, f"distributed.timeout_s={PG_TIMEOUT_S}", *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _child_with_rank(parent: int, rank: int) -> int | None:
    """pid of the torchrun worker (a child of `parent`) whose environment has RANK=rank."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0") if ppid == parent else []
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ddp_data"), n_cases=4)


def test_two_ranks_train_and_loss_falls(data, tmp_path):
    # one process's 20 steps per epoch, shared by the 2 ranks (distributed.scaling=samples): 10 each
    proc = _torchrun(data, tmp_path, "train.epochs=3", "train.steps_per_epoch=20", "data.fold=0",
                     "validation.every_epochs=3")
    try:
        out, err = proc.communicate(timeout=150)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, err[-3000:]
    # channels-last weights under DDP: no gradient-bucket copy (session.canonical_strides)
    assert "Grad strides do not match bucket view strides" not in err
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 31))  # rank 0 alone wrote: no duplicates
    first, last = (sum(r["loss"] for r in part) / 5 for part in (steps[:5], steps[-5:]))
    assert last < 0.85 * first, (first, last)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["world_size"] == 2 and run["status"] == "finished" and "val_dice_mean" in run["best"]
    assert out.count("training finished") == 1  # only rank 0 prints


def test_killed_rank_ends_the_job(data, tmp_path):
    proc = _torchrun(data, tmp_path, "train.epochs=1000", "train.steps_per_epoch=10", "data.fold=-1")
    try:
        wait_for_line(proc, "step 3 ", timeout=120)
        victim = _child_with_rank(proc.pid, 1)
        assert victim is not None, "rank 1 worker not found"
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.communicate(timeout=PG_TIMEOUT_S + 40)
        elapsed = time.monotonic() - killed_at
    finally:
        kill_group(proc)
    assert proc.returncode != 0
    assert elapsed < PG_TIMEOUT_S + 40


def _exited(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_hung_rank_times_out(data, tmp_path):
    """A rank that stops responding (SIGSTOP) makes rank 0 fail after distributed.timeout_s, not hang."""
    timeout = 5
    proc = _torchrun(data, tmp_path, "train.epochs=1000", "train.steps_per_epoch=10", "data.fold=-1",
                     f"distributed.timeout_s={timeout}")
    victim = None
    try:
        wait_for_line(proc, "step 3 ", timeout=120)
        rank0, victim = _child_with_rank(proc.pid, 0), _child_with_rank(proc.pid, 1)
        assert rank0 and victim
        os.kill(victim, signal.SIGSTOP)
        stopped_at = time.monotonic()
        while not _exited(rank0) and time.monotonic() - stopped_at < timeout + 30:
            time.sleep(0.2)
        waited = time.monotonic() - stopped_at
        os.kill(victim, signal.SIGCONT)  # let torchrun's SIGTERM reach it
        _, err = proc.communicate(timeout=60)
    finally:
        if victim:
            try:
                os.kill(victim, signal.SIGCONT)
            except ProcessLookupError:
                pass
        kill_group(proc)
    assert 0.5 * timeout <= waited < timeout + 30, waited
    assert proc.returncode != 0
    assert f"another rank died or hung longer than distributed.timeout_s={timeout}" in err
