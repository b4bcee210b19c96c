"""Geometry of the synthetic phantoms: smooth random fields, brain and tissue, tumour, affines.

Everything here works in voxel space on a boolean/label level; brats_seg.synth.phantoms turns the labels into
intensities and files. The shapes are shared by the images and the ground truth, so the label map
describes exactly what the images show.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

Shape = tuple[int, int, int]

# Tissue class codes used between shape generation and rendering (not the on-disk labels).
BG, CSF, GM, WM, ED, NCR, ET = range(7)
AFFINE_KINDS = ("lps", "ras", "oblique")


def smooth_field(rng: np.random.Generator, shape: Shape, cells: int = 6) -> np.ndarray:
    """Smooth random field, zero mean and unit std: random weights on a grid of Gaussian bumps.

    `cells` is the number of bumps along the longest axis. The field is a separable sum,
    applied one axis at a time, which is ~20x cheaper than blurring or zooming full-size noise.
    """
    step = max(shape) / cells
    field = rng.standard_normal(tuple(int(np.ceil(n / step)) + 3 for n in shape))
    for axis, n in enumerate(shape):
        centres = (np.arange(field.shape[axis]) - 1.0) * step
        weights = np.exp(-0.5 * ((np.arange(n)[:, None] - centres[None, :]) / step) ** 2)
        field = np.moveaxis(np.tensordot(weights, field, axes=(1, axis)), 0, axis)
    field = (field - field.mean()) / (field.std() + 1e-8)
    return np.clip(field, -2.5, 2.5).astype(np.float32)


def _grid(shape: Shape) -> list[np.ndarray]:
    """Voxel coordinates relative to the volume centre, normalised to [-1, 1] per axis."""
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) / ((n - 1) / 2) for n in shape]
    return np.meshgrid(*axes, indexing="ij", sparse=True)


def brain_tissue(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Label volume of BG/CSF/GM/WM: a deformed ellipsoid with cortex, sulci and ventricles.

    The normalised radius `rho` (0 at the centre, 1 on the deformed surface) drives the layers, so
    the cortex follows the wavy brain boundary like a real skull-stripped brain does.
    """
    x, y, z = _grid(shape)
    semi = rng.uniform([0.74, 0.82, 0.74], [0.84, 0.90, 0.84])
    r = np.sqrt((x / semi[0]) ** 2 + (y / semi[1]) ** 2 + (z / semi[2]) ** 2)
    rho = r / (1.0 + 0.06 * smooth_field(rng, shape, cells=5))
    gm_start = 0.74 + 0.05 * smooth_field(rng, shape, cells=7)
    sulci = smooth_field(rng, shape, cells=12)
    tissue = np.full(shape, BG, dtype=np.uint8)
    tissue[rho < 1.0] = WM
    tissue[(rho < 1.0) & (rho > gm_start)] = GM
    tissue[(rho < 1.0) & ((rho > 0.96) | ((rho > 0.82) & (sulci > 1.4)))] = CSF
    tissue[_ventricles(rng, x, y, z, semi) & (rho < 0.7)] = CSF
    return tissue


def _ventricles(rng, x, y, z, semi) -> np.ndarray:
    """Two elongated, slightly asymmetric lateral ventricles either side of the midline."""
    mask = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=bool)
    size = rng.uniform(0.8, 1.3)
    for side in (-1.0, 1.0):
        cx = side * rng.uniform(0.08, 0.14) * semi[0]
        cy, cz = rng.uniform(-0.05, 0.1) * semi[1], rng.uniform(0.0, 0.15) * semi[2]
        rx, ry, rz = size * np.array([0.07, 0.32, 0.12]) * semi
        mask |= ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 < 1.0
    return mask


def _random_rotation(rng: np.random.Generator, min_deg: float, max_deg: float) -> np.ndarray:
    """Rotation by `min_deg`..`max_deg` degrees about a random axis (Rodrigues' formula)."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(min_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _blob_distance(rng, shape: Shape, centre, radii, wobble: float) -> np.ndarray:
    """Ellipsoidal distance (<1 inside) from `centre`, randomly rotated and field-perturbed."""
    rot = _random_rotation(rng, 0.0, 90.0)
    idx = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    rel = [idx[i] - np.float32(centre[i]) for i in range(3)]
    d2 = sum(((rot[j, 0] * rel[0] + rot[j, 1] * rel[1] + rot[j, 2] * rel[2]) / radii[j]) ** 2
             for j in range(3))
    return np.sqrt(d2) * np.exp(wobble * smooth_field(rng, shape, cells=8))


def tumour_regions(rng: np.random.Generator, tissue: np.ndarray) -> dict[str, np.ndarray]:
    """Nested tumour masks {wt, tc, ncr, et} inside the brain, redrawn until all are sizeable.

    Nesting holds by construction: TC is cut from WT, NCR from TC, and ET = TC minus NCR (the
    enhancing rim around the necrotic core), so ET ⊂ TC ⊂ WT always.
    """
    brain = tissue != BG
    n_brain = int(brain.sum())
    depth = ndi.distance_transform_edt(np.pad(brain, 1))[1:-1, 1:-1, 1:-1]
    centres = np.flatnonzero(depth > 0.35 * depth.max())  # well inside, so most of WT is brain
    for _ in range(50):
        regions = _draw_tumour(rng, brain, centres, n_brain)
        sizes = {k: int(v.sum()) for k, v in regions.items()}
        minimum = max(8, int(0.001 * n_brain))
        frac = sizes["wt"] / n_brain
        if 0.015 <= frac <= 0.12 and min(sizes["ncr"], sizes["et"], sizes["wt"] - sizes["tc"]) >= minimum:
            return regions
    raise RuntimeError(f"could not draw a tumour with all sub-regions in a brain of {n_brain} voxels")


def _draw_tumour(rng, brain: np.ndarray, centres: np.ndarray, n_brain: int) -> dict[str, np.ndarray]:
    """One random draw of the tumour: edema blob, an off-centre core blob, a necrotic centre."""
    shape = brain.shape
    centre = np.array(np.unravel_index(centres[rng.integers(centres.size)], shape))
    radius = (3.0 * rng.uniform(0.025, 0.08) * n_brain / (4.0 * np.pi)) ** (1 / 3)
    radii = radius * np.exp(rng.uniform(-0.25, 0.25, 3))
    wt = (_blob_distance(rng, shape, centre, radii, 0.2) < 1.0) & brain
    core_scale = rng.uniform(0.65, 0.85)
    core_centre = centre + rng.uniform(-0.2, 0.2, 3) * radii
    core_d = _blob_distance(rng, shape, core_centre, core_scale * radii, 0.15)
    tc = (core_d < 1.0) & wt
    ncr_d = core_d * np.exp(0.15 * smooth_field(rng, shape, cells=10))
    ncr = (ncr_d < rng.uniform(0.6, 0.8)) & tc
    return {"wt": wt, "tc": tc, "ncr": ncr, "et": tc & ~ncr}


def draw_affine(rng: np.random.Generator, shape: Shape,
                spacing: Sequence[float] | None = None, kind: str | None = None) -> np.ndarray:
    """A valid voxel-to-world affine: LPS (like real BraTS), RAS, or oblique (3-20 degrees).

    The world origin lies near the volume centre. Values are rounded to float32 so the sform
    stored in the header is exactly the affine we return.
    """
    kind = kind if kind is not None else AFFINE_KINDS[int(rng.integers(len(AFFINE_KINDS)))]
    if kind not in AFFINE_KINDS:
        raise ValueError(f"affine kind {kind!r} is not one of {AFFINE_KINDS}")
    if spacing is None:
        spacing = np.round(rng.uniform(0.9, 1.5) * rng.uniform(0.95, 1.3, 3), 3)
    lps = kind == "lps" or (kind == "oblique" and rng.random() < 0.5)
    rot = np.diag([-1.0, -1.0, 1.0]) if lps else np.eye(3)
    if kind == "oblique":
        rot = _random_rotation(rng, 3.0, 20.0) @ rot
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(np.asarray(spacing, dtype=float))
    centre = (np.asarray(shape, dtype=float) - 1) / 2
    affine[:3, 3] = np.round(-affine[:3, :3] @ centre + rng.uniform(-10.0, 10.0, 3), 2)
    return affine.astype(np.float32).astype(np.float64)
