"""2D training end to end on a tiny synthetic image/mask folder: the loss falls, checkpoints and
run files are written, a pre-empted run resumes to bitwise the weights of an uninterrupted one;
evaluation reproduces a hand-computed mIoU; prediction writes palette masks and overlays; the
loss pieces (ignore index, Dice, aux head)."""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from brats_seg.errors import InputError
from brats_seg.engine.checkpoint import checkpoint_dir, save_best
from brats_seg.seg2d.config import load_config_2d
from brats_seg.seg2d.losses import Seg2DLoss, masked_cross_entropy, soft_dice_loss
from brats_seg.seg2d.trainer import train_2d

torch.set_num_threads(1)

COLOURS = np.array([[40, 40, 40], [220, 30, 30], [30, 30, 220]])
TINY = ["model.backbone=mobilenet_v2", "model.width_mult=0.35", "model.aspp_channels=16", "model.dropout=0.1",
        "data.format=folder", "data.num_classes=3", "data.train_split=train", "data.val_split=val",
        "data.crop_size=48", "data.batch_size=2", "data.num_workers=0", "augment.scale_range=[0.75,1.25]",
        "augment.rotate_degrees=5", "augment.jitter=0.1", "optim.name=adamw", "optim.lr=0.003",
        "train.device=cpu", "train.num_threads=1", "train.log_every_steps=1", "train.progress=false"]


def write_dataset(root: Path, n_train: int = 8, n_val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """folder-format splits: grey noise (class 0), a red square (1), a blue disc (2); top 2 rows = 255."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for split, n in (("train", n_train), ("val", n_val)):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            mask = np.zeros((size, size), np.uint8)
            y, x = rng.integers(0, size // 2, 2)
            mask[y:y + size // 3, x:x + size // 3] = 1
            cy, cx = rng.integers(size // 5, size - size // 5, 2)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < (size // 6) ** 2] = 2
            image = COLOURS[mask] + rng.normal(0, 20, (size, size, 3))
            mask[:2] = 255
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / split / "images" / f"{i:03d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("shapes"))


def _losses(run_dir: Path) -> list[float]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in records if r["kind"] == "step"]


def _latest(run_dir: Path) -> dict:
    return torch.load(checkpoint_dir(run_dir) / "latest.pt", weights_only=True)


def test_cli_train_loss_falls_and_writes_the_run(data, tmp_path, run_cli):
    config = tmp_path / "tiny.yaml"
    config.write_text("task: 2d\nmodel:\n  name: deeplabv3plus\n")
    out = tmp_path / "run"
    code, stdout, err = run_cli("train", "--config", config, "--data", data, "--out", out, *TINY,
                                "train.epochs=2", "train.steps_per_epoch=8")
    assert code == 0, err
    losses = _losses(out)
    assert len(losses) == 16
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
    for name in ("latest.pt", "previous.pt", "best.pt"):
        assert (checkpoint_dir(out) / name).is_file()
    best = torch.load(checkpoint_dir(out) / "best.pt", weights_only=True)
    assert best["meta"]["task"] == "2d" and best["meta"]["num_classes"] == 3
    assert 0.0 <= best["metrics"]["val_miou"] <= 1.0 and len(best["metrics"]["val_iou_per_class"]) == 3
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["task"] == "2d" and run["progress"]["step"] == 16
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 2 and "val_miou" in rows[0]
    assert (out / "curves.png").is_file() and (out / "config.yaml").is_file()
    code, _, err = run_cli("train", "--config", config, "--data", data, "--out", out, *TINY)
    assert code == 2 and "--resume" in err  # an existing run is never overwritten


def test_preempted_run_resumes_exactly(data, tmp_path, monkeypatch):
    """6 steps straight == 4 steps, pre-empted (exit 75), --resume to 6: identical weights and losses."""
    steps = [*TINY, "train.epochs=2", "train.steps_per_epoch=3"]
    assert train_2d(load_config_2d(None, steps), data, tmp_path / "straight", resume=False) == 0

    import brats_seg.engine.loop as loop  # the shared epoch loop the 2D trainer runs

    real = loop.stop_reason
    monkeypatch.setattr(loop, "stop_reason", lambda state, session: "preempted" if state.progress.step == 4
                        else real(state, session))
    assert train_2d(load_config_2d(None, steps), data, tmp_path / "cut", resume=False) == 75
    assert _latest(tmp_path / "cut")["progress"]["step"] == 4
    monkeypatch.setattr(loop, "stop_reason", real)
    assert train_2d(load_config_2d(None, steps), data, tmp_path / "cut", resume=True) == 0

    a, b = _latest(tmp_path / "straight"), _latest(tmp_path / "cut")
    assert a["progress"]["step"] == b["progress"]["step"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "cut")
    with pytest.raises(InputError, match="different config"):
        train_2d(load_config_2d(None, [*steps, "optim.lr=0.1"]), data, tmp_path / "cut", resume=True)


# ---- evaluation and prediction on a constructed case -----------------------------------------------

class ColourOracle(nn.Module):
    """Logits = the normalised RGB values: a red pixel is class 0, a green one class 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3)[:, :, None, None])
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.fixture(scope="module")
def oracle_case(tmp_path_factory) -> tuple[Path, Path]:
    """8x8 image: columns 0-3 red, 4-7 green. Labels: 0 | 1 1 | 2 2 (cols 6-7 are wrongly green
    for class 2), row 0 ignored. Hand count over the 56 labelled pixels: IoU 1, 14/28, 0/14."""
    from brats_seg.models.registry import register_model

    try:
        register_model("test_colour_oracle_2d", ColourOracle)
    except ValueError:
        pass  # registered by an earlier module instance
    tmp = tmp_path_factory.mktemp("oracle")
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4, 0] = 255
    image[:, 4:, 1] = 255
    mask = np.zeros((8, 8), np.uint8)
    mask[:, 4:6], mask[:, 6:], mask[0] = 1, 2, 255
    for sub in ("images", "masks"):
        (tmp / "data" / sub).mkdir(parents=True)
    Image.fromarray(image).save(tmp / "data" / "images" / "x.png")
    Image.fromarray(mask).save(tmp / "data" / "masks" / "x.png")
    data = {"format": "folder", "num_classes": 3, "train_split": "", "val_split": ""}
    meta = {"task": "2d", "model": "test_colour_oracle_2d", "model_kwargs": {}, "num_classes": 3,
            "ignore_index": 255, "class_names": ["red", "green", "blue"], "data": data}
    save_best(tmp / "run", ColourOracle().state_dict(), meta, {})
    return tmp / "run", tmp / "data"


def test_evaluate_matches_the_hand_count(oracle_case, tmp_path):
    from brats_seg.seg2d.cli import configure_evaluate, run_evaluate

    run, root = oracle_case
    parser = argparse.ArgumentParser()
    configure_evaluate(parser)
    assert run_evaluate(parser.parse_args(["--model", str(run), "--data", str(root), "--out", str(tmp_path)])) == 0
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["iou_per_class"] == pytest.approx({"red": 1.0, "green": 0.5, "blue": 0.0})
    assert report["miou"] == pytest.approx(0.5) and report["pixel_accuracy"] == pytest.approx(42 / 56)
    rows = list(csv.DictReader((tmp_path / "per_class_iou.csv").open()))
    assert [float(r["iou"]) for r in rows] == pytest.approx([1.0, 0.5, 0.0])
    image_rows = list(csv.DictReader((tmp_path / "per_image.csv").open()))
    assert image_rows[0]["id"] == "x" and int(image_rows[0]["labelled_pixels"]) == 56


def test_evaluate_refuses_a_3d_checkpoint(oracle_case, tmp_path):
    from brats_seg.seg2d.evaluate import evaluate_2d

    run, root = oracle_case
    payload = torch.load(checkpoint_dir(run) / "best.pt", weights_only=True)
    save_best(tmp_path / "run3d", payload["model"], {**payload["meta"], "task": "3d"}, {})
    with pytest.raises(InputError, match="not a 2D checkpoint"):
        evaluate_2d(tmp_path / "run3d", root, None, tmp_path / "out")


def test_predict_writes_palette_mask_and_overlay(oracle_case, tmp_path):
    from brats_seg.seg2d.palette import voc_palette
    from brats_seg.seg2d.predict import predict_2d

    run, root = oracle_case
    rows = predict_2d(run, root / "images", tmp_path)
    assert [Path(r["mask"]).name for r in rows] == ["x.png"]
    mask = Image.open(tmp_path / "x.png")
    assert mask.mode == "P"
    expected = np.zeros((8, 8), np.uint8)
    expected[:, 4:] = 1
    np.testing.assert_array_equal(np.array(mask), expected)
    over = np.array(Image.open(tmp_path / "x_overlay.png"))
    green_over_class_1 = np.round(0.5 * np.array([0, 255, 0]) + 0.5 * voc_palette(2)[1])
    assert over.shape == (8, 8, 3) and over[3, 6].tolist() == green_over_class_1.tolist()


# ---- loss pieces -----------------------------------------------------------------------------------

def test_loss_ignores_void_pixels_and_never_returns_nan():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[:, 0] = 255
    changed = logits.detach().clone()
    changed[:, :, 0] += 5.0  # only ignored pixels change
    fn = Seg2DLoss(ce_weight=1.0, dice_weight=1.0, ignore_index=255)
    assert fn(logits, labels).item() == pytest.approx(fn(changed, labels).item(), abs=1e-6)
    void = torch.full((2, 4, 4), 255)
    assert masked_cross_entropy(logits, void, 255).item() == 0.0


def test_dice_is_zero_for_a_perfect_prediction_and_aux_adds_weighted_ce():
    labels = torch.tensor([[[0, 1], [2, 2]]])
    perfect = 50.0 * torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    assert soft_dice_loss(perfect, labels, 255).item() == pytest.approx(0.0, abs=1e-6)
    aux = torch.zeros(1, 3, 2, 2)
    fn = Seg2DLoss(ce_weight=1.0, dice_weight=0.0, aux_weight=0.4)
    with_aux = fn({"out": perfect, "aux": aux}, labels).item()
    assert with_aux == pytest.approx(0.4 * np.log(3), abs=1e-4)  # uniform aux logits: CE = log 3
