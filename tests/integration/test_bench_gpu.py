"""`brats-seg bench gpu` on this CPU machine: one line and exit 0 without CUDA; `--device cpu` runs
the whole check (training steps in fp32 and bf16 autocast, predict agreement, the JSON report) on
tiny sizes, so the code a GPU machine runs is exercised here."""
from __future__ import annotations

import json

import pytest
import torch

from brats_seg.bench.gpu import NO_CUDA

TINY = ["model.features=[4,8,16]", "data.patch_size=[16,16,16]", "data.batch_size=2", "validation.sw_batch_size=2",
        "optim.name=adamw", "optim.lr=0.01", "optim.weight_decay=0.0", "train.num_threads=1"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from brats_seg.synth.phantoms import synthesize_case

    return synthesize_case("Phantom_0001", tmp_path_factory.mktemp("gpu_case"), seed=3, shape=(32, 32, 24))


def test_without_cuda_nothing_is_measured(run_cli, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run_cli("bench", "gpu", "--out", tmp_path / "gpu.json")
    assert code == 0 and out == NO_CUDA + "\n" and err == ""
    assert json.loads((tmp_path / "gpu.json").read_text()) == {"measured": False, "reason": NO_CUDA}


def test_cpu_smoke_runs_every_check(run_cli, tmp_path, case):
    out = tmp_path / "gpu.json"
    code, stdout, err = run_cli("bench", "gpu", "--device", "cpu", "--steps", "3", "--case", case, "--threads", "1",
                                "--out", out, *TINY)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["measured"] and report["device"]["type"] == "cpu" and report["patch_size"] == [16, 16, 16]
    assert set(report["train"]) == {"fp32", "bf16"}
    for result in report["train"].values():
        assert result["finite"] and result["learning"] and result["skipped_steps"] == 0
        assert result["steps_per_s"] > 0 and not result["grad_scaler"]  # no GradScaler for fp32 or bf16
    assert report["ddp"] == {"ran": False, "reason": "0 CUDA device(s); the NCCL run needs 2"}
    p = report["predict"]
    assert p["shape"] == [32, 32, 24] and p["dice"] == {"WT": 1.0, "TC": 1.0, "ET": 1.0}  # CPU against itself
    assert p["max_abs_probability_difference"] == 0.0 and p["cpu_s"] > 0 and p["cpu_first_s"] > 0
    assert "| fp32 |" in stdout and "| bf16 |" in stdout and "Dice cpu vs cpu" in stdout
    assert out.with_suffix(".md").read_text().startswith("cpu (capability -)")


@pytest.mark.parametrize("args, flag", [(["--case", "no/such/case"], "no/such/case"), (["--steps", "0"], "--steps"),
                                        (["--config", "no/such.yaml"], "no/such.yaml")])
def test_bad_arguments_are_one_line(run_cli, tmp_path, args, flag):
    code, _, err = run_cli("bench", "gpu", "--device", "cpu", "--out", tmp_path / "gpu.json", *args)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error:") and flag in err
    assert not (tmp_path / "gpu.json").exists()


@pytest.mark.ddp
@pytest.mark.slow  # ~30 s on 2 cores: torchrun starts three Python processes
def test_cpu_smoke_of_the_two_rank_run(run_cli, tmp_path, case):
    code, stdout, err = run_cli("bench", "gpu", "--device", "cpu", "--steps", "2", "--case", case, "--ddp", "always",
                                "--threads", "1", "--out", tmp_path / "gpu.json", *TINY)
    assert code == 0, err
    ddp = json.loads((tmp_path / "gpu.json").read_text())["ddp"]
    assert ddp["ok"] and ddp["backend"] == "gloo" and ddp["world_size"] == 2 and ddp["status"] == "finished"
    assert ddp["steps"] >= 1 and ddp["finite"]
    assert "DDP (gloo, 2 ranks" in stdout and "ok in" in stdout
