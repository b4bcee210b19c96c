"""int8 models from 2D checkpoints: calibration on dataset images, a weights_only-safe file, and
the fp32-vs-int8 scores (mIoU, pixel agreement). The quantization flow itself is seg2d/quantize.py;
the latency comparison that `brats-seg quantize` and `bench 2d` print is bench/seg2d.py.

What the .pt file holds, and why. The converted FX GraphModule cannot be written as one safe
file on torch 2.13: pickling it stores Python code (unsafe to load, refused by weights_only),
and torch.export fails on the quantized conv's packed-parameter objects. So int8.pt is a
*recipe*: the state dict of the prepared (observed) model, i.e. the fp32 weights plus every
observer's calibration statistics, all plain tensors read with torch.load(weights_only=True).
`load_int8` rebuilds the fp32 model from the stored meta, re-inserts the observers
(prepare_fx is deterministic), loads the statistics and converts: the result is bitwise the
model that was measured (a test checks it). Optionally a TorchScript trace of the int8 model
can be written too (torch.jit.trace + torch.jit.save; loaded with torch.jit.load, no pickle);
it runs without brats_seg, but torch 2.13 marks torch.jit as deprecated, so it is an extra.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from brats_seg.errors import InputError
from brats_seg.seg2d.quantize import convert_observed, prepare_observed, quiet

FORMAT = "brats-seg-int8"
VERSION = 1


@dataclass
class QuantizedCheckpoint:
    """What quantize_checkpoint made: both models, the data to compare them on, the report so far."""

    fp32: torch.nn.Module
    int8: torch.nn.Module
    meta: dict
    eval_set: Any
    eval_scale: float
    example: torch.Tensor  # a calibration image: the TorchScript trace's input
    report: dict


def calibration_images(dataset, n: int) -> list[torch.Tensor]:
    """n images (1x3xHxW, normalised) spread evenly over the dataset: deterministic, not the first n."""
    if n < 1:
        raise InputError("--calibration", f"got {n}; expected >= 1 image")
    picks = np.unique(np.linspace(0, len(dataset) - 1, num=min(n, len(dataset))).round().astype(int))
    return [dataset[int(i)]["image"][None] for i in picks]


def calibrate(model: torch.nn.Module, images: Iterable[torch.Tensor], eval_scale: float = 1.0,
              backend: str = "x86") -> tuple[torch.nn.Module, dict]:
    """(int8 model, prepared state dict) after running `images` through the observers as inference would."""
    from brats_seg.seg2d.evaluate import predict_logits_2d

    prepared = prepare_observed(model, backend)
    for x in images:
        predict_logits_2d(prepared, x, eval_scale)
    return convert_observed(prepared), prepared.state_dict()


def save_int8(path: Path, meta: dict, prepared_state: dict, backend: str, info: dict) -> Path:
    from brats_seg.core.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, "meta": meta, "prepared": prepared_state,
                    "backend": backend, "info": info}, tmp)
    return path


def load_int8(path: Path) -> tuple[torch.nn.Module, dict]:
    """(int8 model, meta) from a file written by save_int8; weights_only, nothing unpickled."""
    from brats_seg.models.registry import create_model

    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # missing, truncated, or not a weights-only file
        raise InputError(path, f"cannot be read as a brats-seg int8 file ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("version") != VERSION:
        raise InputError(path, f"not a {FORMAT} v{VERSION} file (write one with brats-seg quantize)")
    meta = payload["meta"]
    prepared = prepare_observed(create_model(meta["model"], **meta["model_kwargs"]), payload["backend"])
    prepared.load_state_dict(payload["prepared"])
    return convert_observed(prepared).eval(), meta


def save_torchscript(qmodel: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    """TorchScript trace of the int8 model (input sizes stay free: the models read them from x)."""
    from brats_seg.core.atomic import atomic_path

    with quiet(), torch.no_grad():
        # the requantizing cats read their inputs' scales as Python floats: the trace records them as
        # constants, which is right (they are fixed by calibration), so the TracerWarning is silenced
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(qmodel, example, check_trace=False)
        with atomic_path(Path(path)) as tmp:
            torch.jit.save(traced, str(tmp))
    return Path(path)


def load_torchscript(path: Path) -> torch.nn.Module:
    with quiet():
        return torch.jit.load(str(path), map_location="cpu")


@torch.no_grad()
def score_pair(fp32: torch.nn.Module, qmodel: torch.nn.Module, dataset, meta: dict, eval_scale: float = 1.0,
               max_images: int = 0) -> dict:
    """mIoU / pixel accuracy of both models and their pixel agreement, one pass over the dataset."""
    from brats_seg.seg2d.evaluate import predict_logits_2d
    from brats_seg.seg2d.metrics import SegmentationMeter

    meters = {name: SegmentationMeter(meta["num_classes"], meta["ignore_index"]) for name in ("fp32", "int8")}
    same = total = 0
    n = min(len(dataset), max_images) if max_images else len(dataset)
    for i in range(n):
        item = dataset[i]
        preds = {name: predict_logits_2d(m, item["image"][None], eval_scale).argmax(1)
                 for name, m in (("fp32", fp32.eval()), ("int8", qmodel))}
        for name, pred in preds.items():
            meters[name].update(pred, item["mask"][None])
        same += int((preds["fp32"] == preds["int8"]).sum())
        total += preds["fp32"].numel()
    scores = {name: m.compute() for name, m in meters.items()}
    return {**scores, "pixel_agreement": same / max(total, 1), "num_images": n}


def quantize_checkpoint(model_path: Path, data_root: Path, out: Path, calibration: int = 16,
                        calibration_split: str | None = None, eval_split: str | None = None,
                        config: Path | None = None, backend: str = "x86") -> QuantizedCheckpoint:
    """Calibrate on `calibration` images of the training split (default) and save the int8 recipe
    to `out`; the models come back with the validation split (default) to compare them on."""
    from brats_seg.core.hashing import sha256_file
    from brats_seg.infer.runs import checkpoint_file
    from brats_seg.seg2d.evaluate import dataset_for_model, load_model_2d

    ckpt = checkpoint_file(Path(model_path))
    fp32, meta = load_model_2d(ckpt, "cpu")
    calib_set, d, calib_name = dataset_for_model(meta, data_root, config, calibration_split or
                                                 (meta.get("data") or {}).get("train_split", "train"))
    eval_set, _, eval_name = dataset_for_model(meta, data_root, config, eval_split)
    images = calibration_images(calib_set, calibration)
    qmodel, prepared_state = calibrate(fp32, images, d.eval_scale, backend)
    info = {"source": {"checkpoint": str(ckpt.resolve()), "sha256": sha256_file(ckpt)},
            "calibration": {"split": calib_name, "images": len(images)}, "eval_scale": d.eval_scale}
    save_int8(Path(out), meta, prepared_state, backend, info)
    report = {"int8_file": str(out), "backend": backend, **info, "eval_split": eval_name}
    return QuantizedCheckpoint(fp32, qmodel, meta, eval_set, d.eval_scale, images[0], report)
