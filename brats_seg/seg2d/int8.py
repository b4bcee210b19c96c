"""int8 models from 2D checkpoints: calibration on dataset images, a weights_only-safe file,
and the fp32-vs-int8 comparison (latency, mIoU, pixel agreement) shared by `brats-seg quantize`
and `bench 2d`.

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

import contextlib
import copy
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from brats_seg.errors import InputError

FORMAT = "brats-seg-int8"
VERSION = 1
_QUIET = (r".*torch\.ao\.quantization is deprecated.*", r".*reduce_range will be deprecated.*",
          r".*quantized tensor creation functions.*", r".*torch\.jit\..* is deprecated.*")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the deprecation warnings of torch.ao.quantization and torch.jit (here only)."""
    with warnings.catch_warnings():
        for pattern in _QUIET:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def calibration_images(dataset, n: int) -> list[torch.Tensor]:
    """n images (1x3xHxW, normalised) spread evenly over the dataset: deterministic, not the first n."""
    if n < 1:
        raise InputError("--calibration", f"got {n}; expected >= 1 image")
    picks = np.unique(np.linspace(0, len(dataset) - 1, num=min(n, len(dataset))).round().astype(int))
    return [dataset[int(i)]["image"][None] for i in picks]


def prepare_observed(model: torch.nn.Module, backend: str = "x86") -> torch.fx.GraphModule:
    """fp32 copy with observers inserted (the int8 qconfig of twod.quantize)."""
    from torch.ao.quantization.quantize_fx import prepare_fx

    from brats_seg.seg2d.quantize import int8_qconfig_mapping

    if backend not in torch.backends.quantized.supported_engines:
        raise InputError("--backend", f"{backend!r} not available; supported: "
                                      f"{', '.join(torch.backends.quantized.supported_engines)}")
    torch.backends.quantized.engine = backend
    float_model = copy.deepcopy(model).cpu().eval()
    with _quiet():
        return prepare_fx(float_model, int8_qconfig_mapping(float_model, backend),
                          example_inputs=(torch.zeros(1, 3, 64, 64),))


def convert_observed(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """int8 GraphModule from a calibrated prepared model (with the common-scale cat fix)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    from brats_seg.seg2d.quantize import _fix_quantized_cat

    with _quiet():
        return _fix_quantized_cat(convert_fx(copy.deepcopy(prepared)))


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

    with _quiet(), torch.no_grad():
        # the requantizing cats read their inputs' scales as Python floats: the trace records them as
        # constants, which is right (they are fixed by calibration), so the TracerWarning is silenced
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(qmodel, example, check_trace=False)
        with atomic_path(Path(path)) as tmp:
            torch.jit.save(traced, str(tmp))
    return Path(path)


def load_torchscript(path: Path) -> torch.nn.Module:
    with _quiet():
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


def interleaved_latency(models: dict[str, torch.nn.Module], shape: tuple[int, ...], threads: int,
                        repeats: int, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Per model: the lowest per-round median (ms) over `rounds` interleaved rounds, and the overall min.

    Interleaving puts both models under the same background load; on a shared CPU a neighbour's
    burst otherwise lands on one model only.
    """
    from brats_seg.seg2d.quantize import benchmark_latency

    results: dict[str, list[dict]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            results[name].append(benchmark_latency(model, shape, threads, max(1, repeats // rounds), warmup=1))
    return {name: {"median_ms": min(r["median_ms"] for r in runs), "min_ms": min(r["min_ms"] for r in runs)}
            for name, runs in results.items()}


def compare_fp32_int8(fp32: torch.nn.Module, qmodel: torch.nn.Module, dataset, meta: dict, eval_scale: float = 1.0,
                      threads: int = 2, repeats: int = 12, max_images: int = 0) -> dict:
    """Side by side: latency at the network's input size of the first image, mIoU, agreement."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        scores = score_pair(fp32, qmodel, dataset, meta, eval_scale, max_images)
    finally:
        torch.set_num_threads(previous)
    h, w = dataset[0]["image"].shape[-2:]
    shape = (1, 3, max(1, round(h * eval_scale)), max(1, round(w * eval_scale)))
    latency = interleaved_latency({"fp32": fp32.eval(), "int8": qmodel}, shape, threads, repeats)
    return {"input": list(shape), "threads": threads, "pixel_agreement": scores["pixel_agreement"],
            "num_images": scores["num_images"],
            "fp32": {**latency["fp32"], "miou": scores["fp32"]["miou"],
                     "pixel_accuracy": scores["fp32"]["pixel_accuracy"]},
            "int8": {**latency["int8"], "miou": scores["int8"]["miou"],
                     "pixel_accuracy": scores["int8"]["pixel_accuracy"]},
            "speedup": latency["fp32"]["median_ms"] / latency["int8"]["median_ms"],
            "miou_drop_points": 100.0 * (scores["fp32"]["miou"] - scores["int8"]["miou"])}


def markdown_table(result: dict) -> str:
    """fp32 and int8 rows: latency, mIoU, pixel accuracy; speed-up, mIoU change and agreement below."""
    lines = ["| model | latency median (ms) | latency min (ms) | mIoU | pixel accuracy |",
             "|---|---:|---:|---:|---:|"]
    for name in ("fp32", "int8"):
        r = result[name]
        lines.append(f"| {name} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['miou']:.4f} | "
                     f"{r['pixel_accuracy']:.4f} |")
    lines.append("")
    lines.append(f"input {'x'.join(map(str, result['input']))}, {result['threads']} thread(s), "
                 f"{result['num_images']} image(s): int8 is {result['speedup']:.2f}x the speed of fp32, "
                 f"mIoU {-result['miou_drop_points']:+.2f} points, pixel agreement {result['pixel_agreement']:.4f}")
    return "\n".join(lines)


def quantize_checkpoint(model_path: Path, data_root: Path, out: Path, calibration: int = 16,
                        calibration_split: str | None = None, eval_split: str | None = None,
                        config: Path | None = None, backend: str = "x86", threads: int = 2, repeats: int = 12,
                        max_eval_images: int = 0, torchscript: Path | None = None) -> dict:
    """Calibrate on `calibration` images of the training split (default), save the int8 recipe to
    `out`, and compare fp32 with int8 on the validation split (default). Returns the report."""
    from brats_seg.infer.runs import checkpoint_file
    from brats_seg.core.hashing import sha256_file
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
    report = {"int8_file": str(out), "backend": backend, **info, "eval_split": eval_name,
              **compare_fp32_int8(fp32, qmodel, eval_set, meta, d.eval_scale, threads, repeats, max_eval_images)}
    if torchscript is not None:
        report["torchscript_file"] = str(save_torchscript(qmodel, images[0], Path(torchscript)))
    return report
