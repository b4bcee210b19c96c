"""What N processes train (distributed.scaling, optim.lr_scaling) under torchrun, 2 gloo ranks:
by default each rank takes half of one process's steps, epochs keep their samples, and the LR
schedule reaches its end at the last step; `scaling: steps` keeps the steps per rank (2x the
samples); a checkpoint of 2 ranks is refused by a resume with 1 under `samples`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train_fixtures import REPO, TINY, cli_env, kill_group, make_dataset

pytestmark = pytest.mark.ddp
LR, MIN_LR = 0.01, 1e-4
PLAN = ["train.epochs=2", "train.steps_per_epoch=6", "data.fold=-1", "schedule.name=poly",
        "schedule.poly_power=1.0", f"schedule.min_lr={MIN_LR}", f"optim.lr={LR}", "distributed.timeout_s=30"]


def _run(data: Path, out: Path, *extra: str, ranks: int = 2, resume: bool = False) -> subprocess.CompletedProcess:
    config = data.parent / "train.yaml"
    config.write_text("task: 3d\n")
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
              if ranks > 1 else [sys.executable])
    cmd = [*launch, "-m", "brats_seg", "train", "--config", str(config), "--data", str(data), "--out", str(out),
           *TINY, *PLAN, *extra, *(["--resume"] if resume else [])]
    proc = subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out_text, err_text = proc.communicate(timeout=150)
    finally:
        kill_group(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out_text, err_text)


def _records(run: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def _check_poly_to_the_end(run: Path, total: int, base: float) -> None:
    """Logged LR after step s is base * (1 - s/total) (power 1), floored at min_lr: its end at s = total."""
    steps = _records(run, "step")
    assert [r["step"] for r in steps] == list(range(1, total + 1))
    for r in steps:
        assert r["lr"] == pytest.approx(max(base * (1 - r["step"] / total), MIN_LR), rel=1e-6), r
    assert steps[-1]["lr"] == pytest.approx(MIN_LR) and steps[-2]["lr"] > 2 * MIN_LR
    payload = torch.load(run / "checkpoints" / "latest.pt", weights_only=True, map_location="cpu")
    assert payload["schedule"]["total_steps"] == total and payload["progress"]["step"] == total


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("scaling_data"), n_cases=4)


@pytest.fixture(scope="module")
def two_ranks(data, tmp_path_factory) -> Path:
    """The plan under the default distributed.scaling=samples, 2 ranks."""
    out = tmp_path_factory.mktemp("two") / "run"
    run = _run(data, out)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def test_samples_scaling_halves_the_steps_and_ends_the_schedule(data, two_ranks, tmp_path):
    one = _run(data, tmp_path / "one", ranks=1)
    assert one.returncode == 0, one.stderr[-3000:]
    _check_poly_to_the_end(tmp_path / "one", 12, LR)
    _check_poly_to_the_end(two_ranks, 6, LR)  # half of one process's steps, per rank
    epochs = _records(two_ranks, "epoch")
    assert [(r["epoch"], r["step"]) for r in epochs] == [(1, 3), (2, 6)]  # an epoch: one process's samples


def test_resume_with_another_world_size_is_refused(data, two_ranks):
    refused = _run(data, two_ranks, ranks=1, resume=True)
    lines = [x for x in refused.stderr.splitlines() if x.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-3000:]
    assert lines[0].startswith("error: --resume:") and "6 steps per process" in lines[0]


def test_steps_scaling_keeps_the_steps_and_scales_the_lr(data, tmp_path):
    run = _run(data, tmp_path / "steps", "distributed.scaling=steps", "optim.lr_scaling=linear")
    assert run.returncode == 0, run.stderr[-3000:]
    _check_poly_to_the_end(tmp_path / "steps", 12, 2 * LR)  # every rank one process's steps; LR x 2
    assert [(r["epoch"], r["step"]) for r in _records(tmp_path / "steps", "epoch")] == [(1, 6), (2, 12)]
