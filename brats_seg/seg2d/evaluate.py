"""2D evaluation: full-image prediction, dataset-level confusion matrix, mIoU / per-class IoU /
pixel accuracy (twod.metrics), written as metrics.json + per_class_iou.csv + per_image.csv.

The same `evaluate_dataset` validates during training (every rank takes every world_size-th
image; one all-reduce of the confusion matrix gives every rank the same numbers) and serves
`evaluate_2d`, the quantization report and `bench 2d`, so all of them score alike.
"""
from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence

import torch
import torch.nn.functional as F

from brats_seg.errors import InputError
from brats_seg.seg2d.metrics import SegmentationMeter, confusion_matrix, mean_iou, pixel_accuracy


def load_model_2d(path: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, meta as stored) from a 2D run dir or checkpoint (best.pt, else latest.pt);
    the meta is checked as a task-2d ModelMeta, so a 3D run is refused with one InputError."""
    from brats_seg.engine.checkpoint import load_inference_model

    return load_inference_model(Path(path), device, task="2d")


@contextlib.contextmanager
def no_cudnn_autotune() -> Iterator[None]:
    """cudnn.benchmark off, restored after: autotuning runs again for every new input shape, and
    full images (validation, predict) bring a new shape almost every time, so it costs more than
    it gains there; training on fixed crops keeps it."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@torch.no_grad()
def predict_logits_2d(model: torch.nn.Module, image: torch.Tensor, eval_scale: float = 1.0,
                      autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """(N, 3, H, W) normalised images -> (N, K, H, W) float logits, run at `eval_scale` × the size."""
    size = image.shape[-2:]
    x = image
    if eval_scale != 1.0:
        scaled = (max(1, round(size[0] * eval_scale)), max(1, round(size[1] * eval_scale)))
        x = F.interpolate(image, size=scaled, mode="bilinear", align_corners=False, antialias=eval_scale < 1)
    with autocast(), no_cudnn_autotune():
        out = model(x)
    out = (out["out"] if isinstance(out, dict) else out).float()
    if out.shape[-2:] != size:
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
    return out


def evaluate_dataset(model: torch.nn.Module, dataset, num_classes: int, ignore_index: int,
                     device: torch.device | str = "cpu", eval_scale: float = 1.0, max_images: int = 0,
                     autocast: Callable[[], ContextManager] = contextlib.nullcontext, info=None,
                     per_image: bool = False) -> tuple[dict, list[dict]]:
    """(SegmentationMeter.compute() over the dataset, per-image rows when asked); model left as found."""
    from brats_seg.engine.distributed import DistInfo, all_reduce_sum

    info = info or DistInfo(device=torch.device(device))
    meter, rows = SegmentationMeter(num_classes, ignore_index), []
    n = min(len(dataset), max_images) if max_images else len(dataset)
    was_training = model.training
    model.eval()
    try:
        for i in range(info.rank, n, info.world_size):
            item = dataset[i]
            logits = predict_logits_2d(model, item["image"][None].to(info.device), eval_scale, autocast)
            pred, target = logits.argmax(1).cpu(), item["mask"][None]
            meter.update(pred, target)
            if per_image:
                rows.append(_image_row(item["id"], pred, target, num_classes, ignore_index))
    finally:
        model.train(was_training)
    meter.cm = all_reduce_sum(meter.cm.to(info.device), info).cpu()
    return {**meter.compute(), "num_images": n}, rows


def _image_row(image_id: str, pred: torch.Tensor, target: torch.Tensor, k: int, ignore_index: int) -> dict:
    cm = confusion_matrix(pred, target, k, ignore_index)
    return {"id": image_id, "miou": mean_iou(cm), "pixel_accuracy": pixel_accuracy(cm),
            "labelled_pixels": int(cm.sum())}


def dataset_for_model(meta: dict, data_root: Path, config: Path | None, split: str | None,
                      overrides: Sequence[str] = ()):
    """(dataset of `split` with eval transform, its data config, split): the data section of
    --config when given, else the run's own (stored in the checkpoint); `data.key=value` overrides apply."""
    from types import SimpleNamespace

    from brats_seg.core.typed_config import apply_overrides, build_typed, check_ranges
    from brats_seg.seg2d.config import RANGES_2D, Data2DConfig, load_config_2d
    from brats_seg.seg2d.build import open_split
    from brats_seg.seg2d.transforms import eval_transform

    if config is not None:
        d = load_config_2d(config, overrides).data
    else:
        merged = apply_overrides({"data": dict(meta.get("data") or {})}, overrides)
        extra = [k for k in merged if k != "data"]
        if extra:
            raise InputError(extra[0], "only data.* overrides apply here (the model comes from the checkpoint)")
        d = build_typed(Data2DConfig, merged["data"], "data.")
        check_ranges(SimpleNamespace(data=d), {k: r for k, r in RANGES_2D.items() if k.startswith("data.")})
    split = d.val_split if split is None else split
    dataset = open_split(d, Path(data_root), split, eval_transform())
    if dataset.num_classes != meta["num_classes"]:
        raise InputError(data_root, f"split {split!r} has {dataset.num_classes} classes but the model predicts "
                                    f"{meta['num_classes']}; check --config / data.format")
    return dataset, d, split


def evaluate_2d(run_or_checkpoint: Path, data_root: Path, config: Path | None, out_dir: Path,
                split: str | None = None, device: str = "cpu", overrides: Sequence[str] = ()) -> dict:
    """Score a 2D model on a dataset split; writes metrics.json, per_class_iou.csv, per_image.csv."""
    from brats_seg.infer.runs import checkpoint_file
    from brats_seg.core.atomic import atomic_write_json, atomic_write_text
    from brats_seg.core.hashing import sha256_file
    from brats_seg.core.paths import refuse_overwrite

    ckpt = checkpoint_file(Path(run_or_checkpoint))
    model, meta = load_model_2d(ckpt, device)
    dataset, d, split = dataset_for_model(meta, data_root, config, split, overrides)
    refuse_overwrite(out_dir, [run_or_checkpoint, ckpt, data_root, *([config] if config else []),
                               *(f for pair in dataset.pairs for f in (pair.image, pair.mask))], "--out", True)
    result, rows = evaluate_dataset(model, dataset, meta["num_classes"], meta["ignore_index"], device,
                                    d.eval_scale, per_image=True)
    names = meta.get("class_names") or [f"class_{i}" for i in range(meta["num_classes"])]
    report = {"miou": result["miou"], "pixel_accuracy": result["pixel_accuracy"],
              "mean_class_accuracy": result["mean_class_accuracy"],
              "iou_per_class": dict(zip(names, result["iou_per_class"])), "num_images": result["num_images"],
              "split": split, "data_root": str(Path(data_root).resolve()), "eval_scale": d.eval_scale,
              "checkpoint": str(ckpt.resolve()), "checkpoint_sha256": sha256_file(ckpt)}
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "metrics.json", report)
    class_rows = [[i, name, "" if v is None else v] for i, (name, v) in enumerate(report["iou_per_class"].items())]
    atomic_write_text(out_dir / "per_class_iou.csv", _csv(["class_index", "class_name", "iou"], class_rows))
    keys = ["id", "miou", "pixel_accuracy", "labelled_pixels"]
    atomic_write_text(out_dir / "per_image.csv", _csv(keys, [[r[k] for k in keys] for r in rows]))
    return report


def _csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def summary_line(report: dict) -> str:
    return (f"mIoU {report['miou']:.4f}  pixel accuracy {report['pixel_accuracy']:.4f}  "
            f"mean class accuracy {report['mean_class_accuracy']:.4f}  ({report['num_images']} images)")
