"""The GPU check as tests (marker `gpu`; every test skips where torch sees no CUDA device).

AMP training steps on CUDA stay finite and learn (bf16 where native, else fp16 with a GradScaler);
predict on CUDA agrees with the CPU (Dice >= 0.99 per region between the label maps of a small
random-but-fixed model on a phantom); two ranks train over NCCL when two GPUs are present; and
`brats-seg bench gpu` runs end to end. None of this has run yet: no GPU was available when it was
written (see the README's GPU section).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from brats_seg.bench.gpu import bench_state, phantom_batch
from brats_seg.engine.runtime import amp_dtype
from brats_seg.engine.step import optimizer_step, train_step
from brats_seg.seg3d.config import load_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda", 0)
TINY = ["model.features=[8,16,32]", "data.patch_size=[32,32,32]", "data.batch_size=2", "optim.name=adamw",
        "optim.lr=0.01", "optim.weight_decay=0.0", "schedule.name=constant", "data.fold=-1"]


def _train(dtype: torch.dtype | None, steps: int = 30) -> tuple[list[float], list[bool], object]:
    cfg = load_config(None, TINY)
    state = bench_state(cfg, CUDA, dtype, steps)
    batch = phantom_batch(cfg.data.batch_size, cfg.data.patch_size, seed=0)
    losses, finite = [], []
    for _ in range(steps):
        losses.append(train_step(state, [batch]))
        finite.append(optimizer_step(state, 0.0))
    return losses, finite, state


def test_amp_choice_follows_the_compute_capability():
    major, _ = torch.cuda.get_device_capability(CUDA)
    expected = torch.bfloat16 if major >= 8 else torch.float16
    assert amp_dtype("auto", CUDA) == expected and amp_dtype("bf16", CUDA) == expected
    assert amp_dtype("fp16", CUDA) == torch.float16 and amp_dtype("none", CUDA) is None


@pytest.mark.parametrize("setting", ["auto", "fp16", "none"])
def test_amp_training_steps_are_finite_and_learn(setting):
    dtype = amp_dtype(setting, CUDA)
    losses, finite, state = _train(dtype)
    assert all(math.isfinite(x) for x in losses), losses
    assert sum(finite) >= len(finite) - 3  # fp16: the GradScaler may skip a few steps while it finds its scale
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    assert state.scaler.is_enabled() == (dtype == torch.float16)
    if dtype == torch.float16:
        assert 0 < state.scaler.get_scale() < float("inf")
    assert all(torch.isfinite(p).all() for p in state.model.parameters())


def test_predict_on_cuda_agrees_with_cpu(tmp_path):
    from brats_seg.evaluate.dice import dice_per_region
    from brats_seg.infer.segmenter import Segmenter
    from brats_seg.synth.phantoms import synthesize_case
    from tests.run_fixtures import make_tiny_run

    run = make_tiny_run(tmp_path / "run", seed=5)  # random but fixed weights, nudged towards tumour
    case = synthesize_case("Phantom_0000", tmp_path / "case", seed=2, shape=(64, 64, 48))
    on_cuda = Segmenter.from_run(run, device="cuda").predict(case)
    on_cpu = Segmenter.from_run(run, device="cpu").predict(case)
    assert on_cuda.labels.shape == on_cpu.labels.shape
    assert (on_cpu.labels > 0).any(), "the model predicts no tumour: agreement would prove nothing"
    dice = dice_per_region(on_cuda.labels, on_cpu.labels)
    assert min(dice.values()) >= 0.99, dice


@pytest.mark.ddp
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_train_over_nccl(tmp_path):
    from tests.train_fixtures import REPO, TINY as TRAIN_TINY, cli_env, make_dataset

    data = make_dataset(tmp_path / "data", n_cases=4)
    config = tmp_path / "train.yaml"
    config.write_text("task: 3d\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "brats_seg",
           "train", "--config", str(config), "--data", str(data), "--out", str(tmp_path / "run"), *TRAIN_TINY,
           "train.device=cuda", "distributed.backend=nccl", "train.amp=auto", "train.epochs=2",
           "train.steps_per_epoch=10", "data.fold=0", "validation.every_epochs=2", "distributed.timeout_s=60"]
    proc = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["world_size"] == 2 and run["status"] == "finished" and "val_dice_mean" in run["best"]
    assert run["model"]["amp_dtype"] == ("bf16" if torch.cuda.get_device_capability(0)[0] >= 8 else "fp16")


def test_bench_gpu_command_on_cuda(run_cli, tmp_path):
    from brats_seg.synth.phantoms import synthesize_case

    case = synthesize_case("Phantom_0000", tmp_path / "case", seed=2, shape=(64, 64, 48))
    out = tmp_path / "gpu.json"
    code, stdout, err = run_cli("bench", "gpu", "--steps", "5", "--case", case, "--ddp", "never", "--out", out,
                                *TINY[:-1])
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["measured"] and report["device"]["type"] == "cuda" and len(report["train"]) == 2
    assert all(r["finite"] for r in report["train"].values())
    p = report["predict"]
    assert p["cuda_s"] > 0 and p["cpu_s"] > 0 and p["max_abs_probability_difference"] < 0.05, p
