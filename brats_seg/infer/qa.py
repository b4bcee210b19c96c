"""A QA picture per case: the mask over FLAIR and T1ce on the three planes through the tumour.

Volumes are shown in RAS orientation (neurological: patient right on the right) with their true
voxel aspect, cropped to the brain, so a reviewer sees the same anatomy whatever the file's
orientation; planes pass through the tumour's centroid (the brain's centre when nothing was
found). The title gives the tumour volumes in mL (WT, TC, ET; infer.case_report). With an
uncertainty map (`predict --tta --uncertainty`), a last row shows its maximum over the three regions
(0 .. 0.5, the largest standard deviation a probability can have). Matplotlib runs headless (Agg).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from brats_seg.core.figures import save_png
from brats_seg.io.geometry import Geometry
from brats_seg.preprocess import spatial

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLOURS = {1: (0.9, 0.1, 0.1), 2: (0.1, 0.8, 0.2), 3: (1.0, 0.85, 0.0)}  # NCR red, ED green, ET yellow
PLANES = (("axial", 2), ("coronal", 1), ("sagittal", 0))


def _canonical(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(array reoriented to RAS axes, spacing along those axes)."""
    ornt = spatial.canonical_ornt(geometry.affine_array)
    spacing = np.asarray(geometry.spacing)[np.argsort(ornt[:, 0])]
    return spatial.reorient(array, ornt), spacing


def _centre(labels: np.ndarray, image: np.ndarray) -> tuple[int, int, int]:
    where = np.argwhere(labels > 0) if labels.any() else np.argwhere(image != 0)
    if where.size == 0:
        return tuple(n // 2 for n in labels.shape)
    return tuple(int(round(v)) for v in where.mean(axis=0))


def _display_box(image: np.ndarray, labels: np.ndarray, margin: int = 4) -> tuple[slice, ...]:
    """The brain's (and tumour's) bounding box plus a margin: the pictures show anatomy, not air."""
    box = spatial.nonzero_box((image != 0) | (labels > 0))
    return tuple(slice(max(lo - margin, 0), min(hi + margin, n)) for (lo, hi), n in zip(box, image.shape))


def _plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A 2D slice with the first remaining RAS axis horizontal and the second vertical (origin lower)."""
    return np.take(volume, index, axis=axis).T


def _overlay(labels2d: np.ndarray) -> np.ndarray:
    rgba = np.zeros(labels2d.shape + (4,), np.float32)
    for value, colour in COLOURS.items():
        rgba[labels2d == value] = (*colour, 0.45)
    return rgba


def _window(image: np.ndarray) -> tuple[float, float]:
    brain = image[image != 0]
    if brain.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(brain, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def qa_figure(labels: np.ndarray, images: dict[str, np.ndarray], geometry: Geometry, title: str = "",
              uncertainty: np.ndarray | None = None) -> Figure:
    """A matplotlib Figure: one row per image (e.g. FLAIR, T1ce), columns axial, coronal, sagittal;
    plus a row for `uncertainty` ((3, X, Y, Z) TTA std of WT, TC, ET) when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lab, spacing = _canonical(labels, geometry)
    first = _canonical(next(iter(images.values())), geometry)[0]
    box = _display_box(first, lab)
    lab = lab[box]
    centre = _centre(lab, first[box])
    rows = len(images) + (uncertainty is not None)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3.1 * rows), squeeze=False)
    for row, (name, image) in enumerate(images.items()):
        vol = _canonical(np.asarray(image, dtype=np.float32), geometry)[0][box]
        lo, hi = _window(vol)
        for col, (plane, axis) in enumerate(PLANES):
            ax = axes[row, col]
            h, v = [a for a in range(3) if a != axis]
            aspect = spacing[v] / spacing[h]
            ax.imshow(_plane(vol, axis, centre[axis]), cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect)
            ax.imshow(_overlay(_plane(lab, axis, centre[axis])), origin="lower", aspect=aspect, interpolation="nearest")
            ax.set_title(f"{name} {plane}", fontsize=9)
            ax.axis("off")
    if uncertainty is not None:
        peak = _canonical(np.asarray(uncertainty, dtype=np.float32).max(axis=0), geometry)[0][box]
        _uncertainty_row(axes[-1], peak, centre, spacing)
    fig.suptitle(f"{title}  {volume_text(labels, geometry)}\n(NCR red, ED green, ET yellow)", fontsize=9)
    fig.tight_layout()
    return fig


def volume_text(labels: np.ndarray, geometry: Geometry) -> str:
    """'WT 12.3 mL, TC 4.56 mL, ET 1.2 mL' of a canonical label map on its grid."""
    from brats_seg.infer.case_report import volumes

    found = volumes(labels, geometry.spacing)["volumes_ml"]
    return ", ".join(f"{region} {ml:.3g} mL" for region, ml in found.items())


def _uncertainty_row(axes, peak: np.ndarray, centre: tuple[int, int, int], spacing: np.ndarray) -> None:
    for ax, (plane, axis) in zip(axes, PLANES):
        h, v = [a for a in range(3) if a != axis]
        ax.imshow(_plane(peak, axis, centre[axis]), cmap="magma", vmin=0.0, vmax=0.5, origin="lower",
                  aspect=spacing[v] / spacing[h], interpolation="nearest")
        ax.set_title(f"uncertainty {plane} (TTA std 0-0.5, max of WT/TC/ET)", fontsize=8)
        ax.axis("off")


def write_qa_png(labels: np.ndarray, images: dict[str, np.ndarray], geometry: Geometry, path: Path,
                 title: str = "", uncertainty: np.ndarray | None = None) -> Path:
    """Render `qa_figure` to a PNG atomically."""
    return save_png(qa_figure(labels, images, geometry, title, uncertainty), path)


def qa_images(case) -> dict[str, np.ndarray]:
    """FLAIR and T1ce of a CaseInput (whichever the model uses), in that order."""
    found = {name: case.channel(name) for name in ("flair", "t1ce")}
    found = {k: v for k, v in found.items() if v is not None}
    return found or {case.channels[0]: case.images[0]}
