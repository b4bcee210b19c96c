"""Distillation (brats-seg distill: frozen teacher, KD loss, student checkpoints) and int8
quantization (brats-seg quantize: >= 95% pixel agreement with fp32, a weights_only file that
rebuilds bitwise the measured model, optional TorchScript)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from brats_seg.errors import InputError
from brats_seg.core.hashing import sha256_file
from brats_seg.engine.checkpoint import checkpoint_dir
from brats_seg.seg2d.config import load_config_2d
from brats_seg.seg2d.distill import distillation_loss
from brats_seg.seg2d.losses import DistillWrapper, Seg2DLoss
from brats_seg.seg2d.trainer import train_2d
from tests.integration.test_2d_train import TINY, write_dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory) -> Path:
    """A tiny model trained for 40 steps (val mIoU ~0.85): int8 agreement is then not trivial."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    cfg = load_config_2d(None, [*TINY, "train.epochs=1", "train.steps_per_epoch=40", "train.log_every_steps=10",
                                "optim.lr=0.01", "loss.dice_weight=1.0"])
    assert train_2d(cfg, data, run, resume=False) == 0
    return run


def test_wrapper_keeps_the_teacher_frozen_and_in_eval_mode():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    teacher = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    wrapper = DistillWrapper(student, teacher).train()
    assert student.training and not teacher.training
    before = teacher[1].running_mean.clone()
    x, labels = torch.randn(2, 3, 5, 5), torch.randint(0, 4, (2, 5, 5))
    out = wrapper(x)
    assert torch.equal(out["teacher"], teacher(x)) and torch.equal(teacher[1].running_mean, before)
    loss = Seg2DLoss(temperature=2.0, alpha=0.7)(out, labels)
    assert loss.item() == pytest.approx(distillation_loss(out["out"], out["teacher"], labels, 2.0, 0.7).item())
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student[0].parameters())


def test_distill_cli_trains_a_student(data, teacher, tmp_path, run_cli):
    config = tmp_path / "distill.yaml"
    config.write_text("task: 2d\ndistill:\n  temperature: 2.0\n  alpha: 0.7\n")
    teacher_sha = sha256_file(checkpoint_dir(teacher) / "best.pt")
    out = tmp_path / "student"
    code, _, err = run_cli("distill", "--config", config, "--teacher", teacher, "--data", data, "--out", out,
                           *TINY, "model.backbone=resnet18", "model.aspp_channels=8",
                           "train.epochs=1", "train.steps_per_epoch=3")
    assert code == 0, err
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "step"]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    best = torch.load(checkpoint_dir(out) / "best.pt", weights_only=True)
    assert best["meta"]["model_kwargs"]["backbone"] == "resnet18"
    assert best["meta"]["distilled_from"] == str(teacher.resolve())
    assert not any(k.startswith("teacher.") for k in best["model"])  # only the student is saved
    assert sha256_file(checkpoint_dir(teacher) / "best.pt") == teacher_sha
    saved = json.loads((out / "run.json").read_text())["config"]["distill"]
    assert saved == {"teacher": str(teacher.resolve()), "temperature": 2.0, "alpha": 0.7}


def test_distill_needs_a_matching_teacher(data, teacher, tmp_path, run_cli):
    config = tmp_path / "distill.yaml"
    config.write_text("task: 2d\n")
    code, _, err = run_cli("distill", "--config", config, "--data", data, "--out", tmp_path / "a", *TINY)
    assert code == 2 and "--teacher" in err
    code, _, err = run_cli("distill", "--config", config, "--teacher", teacher, "--data", data,
                           "--out", tmp_path / "b", *TINY, "data.num_classes=4")
    assert code == 2 and "classes" in err


def test_quantize_cli_agrees_with_fp32_and_reloads_bitwise(data, teacher, tmp_path, run_cli):
    from brats_seg.seg2d.evaluate import dataset_for_model, load_model_2d
    from brats_seg.seg2d.int8 import calibrate, calibration_images, load_int8, load_torchscript, save_int8

    out = tmp_path / "int8.pt"
    code, stdout, err = run_cli("quantize", "--model", teacher, "--data", data, "--out", out, "--calibration", 4,
                                "--repeats", 3, "--threads", 1, "--torchscript", tmp_path / "int8.ts")
    assert code == 0, err
    report = json.loads((tmp_path / "int8.pt.json").read_text())
    # the model learnt all three classes (predicting background everywhere would agree trivially: 80% of pixels)
    assert report["fp32"]["miou"] > 0.6, report
    assert report["pixel_agreement"] >= 0.95, report
    print(f"\nint8 vs fp32: agreement {report['pixel_agreement']:.4f}, fp32 pixel accuracy "
          f"{report['fp32']['pixel_accuracy']:.3f}, mIoU {report['fp32']['miou']:.3f} -> {report['int8']['miou']:.3f}")
    assert abs(report["miou_drop_points"]) < 10 and "| int8 |" in stdout
    torch.load(out, weights_only=True)  # plain tensors only

    fp32, meta = load_model_2d(teacher)
    dataset, _, _ = dataset_for_model(meta, data, None, "val")
    qmodel, prepared = calibrate(fp32, calibration_images(dataset, 2))
    save_int8(tmp_path / "again.pt", meta, prepared, "x86", {})
    reloaded, _ = load_int8(tmp_path / "again.pt")
    x = dataset[0]["image"][None]
    with torch.no_grad():
        assert torch.equal(qmodel(x), reloaded(x))
        measured, _ = load_int8(out)
        y = torch.randn(1, 3, 40, 56)  # another size than the trace's
        assert torch.equal(load_torchscript(tmp_path / "int8.ts")(y), measured(y))


def test_load_int8_refuses_other_files(teacher, tmp_path):
    from brats_seg.seg2d.int8 import load_int8

    with pytest.raises(InputError, match="int8"):
        load_int8(checkpoint_dir(teacher) / "best.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot be read"):
        load_int8(tmp_path / "junk.pt")
