"""Proof that the 2D trainer learns on real images: DeepLabV3+ (ResNet-18, from scratch) trained
for a few CPU minutes on the six CamVid sample images (pipelines/train/camvid_deeplabv3plus.yaml)
reaches a training mIoU >= 0.5, scored by `evaluate_2d` on the full-size label maps."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from brats_seg.seg2d.config import load_config_2d
from brats_seg.seg2d.evaluate import evaluate_2d
from brats_seg.seg2d.trainer import train_2d

REPO = Path(__file__).resolve().parents[2]
CAMVID = REPO.parent / "shared" / "datasets" / "camvid_segnet_samples"

pytestmark = [pytest.mark.slow, pytest.mark.realdata,
              pytest.mark.skipif(not CAMVID.is_dir(), reason=f"shared datasets not found at {CAMVID}")]


def test_deeplabv3plus_learns_camvid_samples(tmp_path):
    torch.set_num_threads(1)
    cfg = load_config_2d(REPO / "pipelines" / "train" / "camvid_deeplabv3plus.yaml",
                         ["train.device=cpu", "train.num_threads=1", "train.progress=false"])
    started = time.monotonic()
    assert train_2d(cfg, CAMVID, tmp_path / "run", resume=False) == 0
    train_s = time.monotonic() - started
    report = evaluate_2d(tmp_path / "run", CAMVID, None, tmp_path / "eval")  # best.pt, on the training images
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    print(f"\nCamVid samples: training mIoU {report['miou']:.3f}, pixel accuracy {report['pixel_accuracy']:.3f} "
          f"after {run['progress']['step']} steps in {train_s:.0f} s; per class: "
          + ", ".join(f"{k} {v:.2f}" for k, v in report["iou_per_class"].items() if v is not None))
    assert report["num_images"] == 6
    assert report["miou"] == pytest.approx(run["best"]["val_miou"], abs=1e-6)  # the loop scores as evaluate does
    assert report["miou"] >= 0.5, report
