"""2D prediction: for every image a palette PNG of class indices and an overlay PNG.

`<stem>.png` is a "P"-mode PNG whose pixel values are the predicted class indices 0..K-1 (the
training label space: ADE20K's 1..150 come out as 0..149), shown in VOC palette colours by any
viewer, so it can be read back as a label map. `<stem>_overlay.png` blends those colours over
the image for people to look at. Files are written atomically; names come from the input stems.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from brats_seg.errors import InputError
from brats_seg.seg2d.data import IMAGE_SUFFIXES, read_image
from brats_seg.seg2d.palette import index_to_colour, to_palette_image
from brats_seg.seg2d.transforms import Normalize, image_to_tensor


def list_images(images: Path | str | Sequence[Path | str]) -> list[Path]:
    """A folder (its image files, sorted) or explicit files; stems must be unique (they name the outputs)."""
    items = [images] if isinstance(images, (str, Path)) else list(images)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            files += sorted(p for p in item.iterdir()
                            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        elif item.is_file():
            files.append(item)
        else:
            raise InputError(item, "image or folder not found")
    if not files:
        raise InputError(", ".join(map(str, items)), f"no images ({', '.join(IMAGE_SUFFIXES)}) to predict")
    stems = [f.stem for f in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1 or f"{s}_overlay" in stems})
    if dupes:
        raise InputError(dupes[0], "two input images share this file stem (or STEM and STEM_overlay); "
                                   "outputs are named STEM.png and STEM_overlay.png")
    return files


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """HxWx3 uint8: the image with the class colours blended in at `alpha`."""
    colours = index_to_colour(labels).astype(np.float32)
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * colours, 0, 255).round().astype(np.uint8)


def predict_image(model: torch.nn.Module, image: np.ndarray, device: torch.device | str = "cpu",
                  eval_scale: float = 1.0) -> np.ndarray:
    """HxWx3 uint8 RGB -> HxW uint8 class indices (ImageNet normalisation, as in training)."""
    from brats_seg.seg2d.evaluate import predict_logits_2d

    x, _ = Normalize()(image_to_tensor(image), torch.zeros(1))
    logits = predict_logits_2d(model, x[None].to(device), eval_scale)
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def _save_png(path: Path, image: Image.Image) -> None:
    from brats_seg.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def predict_2d(run_or_checkpoint: Path, images: Path | Sequence[Path], out_dir: Path, device: str = "cpu",
               eval_scale: float | None = None, alpha: float = 0.5) -> list[dict]:
    """Predict every image; returns one {"image", "mask", "overlay"} row per input. An `out_dir`
    that holds an input image (or is the model) is refused before anything is written.

    eval_scale: resize factor for the network input (default: the run's data.eval_scale).
    """
    from brats_seg.core.paths import refuse_overwrite
    from brats_seg.engine.checkpoint import model_checkpoint
    from brats_seg.seg2d.evaluate import load_model_2d

    ckpt = model_checkpoint(Path(run_or_checkpoint))
    model, meta = load_model_2d(ckpt, device)
    files = list_images(images)
    refuse_overwrite(out_dir, [*files, run_or_checkpoint, ckpt], "--out", out_is_folder=True)
    if meta["num_classes"] > 256:
        raise InputError(run_or_checkpoint, "more than 256 classes cannot be written as palette PNGs")
    scale = float((meta.get("data") or {}).get("eval_scale", 1.0)) if eval_scale is None else eval_scale
    out_dir = Path(out_dir)
    rows = []
    for path in files:
        rgb = read_image(path)
        labels = predict_image(model, rgb, device, scale)
        mask_path, overlay_path = out_dir / f"{path.stem}.png", out_dir / f"{path.stem}_overlay.png"
        _save_png(mask_path, to_palette_image(labels))
        _save_png(overlay_path, Image.fromarray(overlay(rgb, labels, alpha)))
        rows.append({"image": str(path), "mask": str(mask_path), "overlay": str(overlay_path)})
    return rows
