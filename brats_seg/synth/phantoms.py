"""Synthetic BraTS-like phantoms for the demo and the tests, written in BraTS 2018 layout.

Each case is `<out>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`: int16 images that are exactly
zero outside a skull-stripped brain and >= 1 inside, and a uint8 label map with BraTS 2018 labels
(1 NCR, 2 ED, 4 ET) drawn from the same shapes as the images.

Intensity design (class means as fractions of each modality's scale; see CONTRAST):

            CSF   GM    WM    ED    NCR   ET
    t1      0.30  0.55  0.75  0.48  0.32  0.58   WM > GM > CSF; ET not bright
    t1ce    0.30  0.55  0.75  0.48  0.32  1.00   like t1, but ET enhances
    t2      1.00  0.62  0.45  0.86  0.92  0.68   CSF > GM > WM; ED and NCR bright
    flair   0.18  0.60  0.50  0.88  0.85  0.72   CSF suppressed; GM > WM; ED bright

No single modality separates every region, so a model has to combine them:
- t1ce alone finds ET, but confuses NCR with CSF and ED with grey/white matter;
- flair alone finds "lesion" (ED, NCR) against normal tissue, but ED and NCR look the same;
- t2 confuses NCR with CSF and with ED. Edema vs core therefore needs flair (lesion or not) and
  t1ce (dark core vs mid-grey edema) together.
Contrast is blurred by a bias field (~±10%), partial-volume smoothing, mild texture and Rician
noise (~3% of scale), so class means overlap enough per voxel that context matters too.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from brats_seg.core.atomic import atomic_path
from brats_seg.io.geometry import Geometry, as_affine_tuple
from brats_seg.io.nifti import nifti_image
from brats_seg.synth import shapes

MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS2018_LABELS = {"ncr": 1, "ed": 2, "et": 4}

# Rows: modality; columns: tissue class codes BG, CSF, GM, WM, ED, NCR, ET (synth_shapes).
CONTRAST = {
    "t1": (0.0, 0.30, 0.55, 0.75, 0.48, 0.32, 0.58),
    "t1ce": (0.0, 0.30, 0.55, 0.75, 0.48, 0.32, 1.00),
    "t2": (0.0, 1.00, 0.62, 0.45, 0.86, 0.92, 0.68),
    "flair": (0.0, 0.18, 0.60, 0.50, 0.88, 0.85, 0.72),
}
SCALE = {"t1": 700.0, "t1ce": 900.0, "t2": 1600.0, "flair": 600.0}
NOISE = 0.03  # Rician noise sigma as a fraction of the modality scale
BIAS = 0.10  # std of the log bias field


@dataclass
class Phantom:
    """One synthetic case in memory: images by modality, BraTS 2018 labels, shared affine."""

    images: dict[str, np.ndarray]
    seg: np.ndarray
    affine: np.ndarray
    affine_kind: str


def make_phantom(seed: int | Sequence[int], shape: Sequence[int] = (96, 96, 64),
                 spacing: Sequence[float] | None = None,
                 affine_kind: str | None = None) -> Phantom:
    """Build one case in memory; the same seed gives byte-identical arrays and affine.

    Geometry, anatomy, tumour and image noise draw from separate child streams, so passing an
    explicit spacing or affine kind does not change the anatomy drawn for that seed.
    """
    shape = tuple(int(s) for s in shape)
    geo_ss, anat_ss, tum_ss, img_ss = np.random.SeedSequence(seed).spawn(4)
    geo_rng = np.random.default_rng(geo_ss)
    drawn = shapes.AFFINE_KINDS[int(geo_rng.integers(len(shapes.AFFINE_KINDS)))]
    kind = affine_kind if affine_kind is not None else drawn
    affine = qform_representable(shapes.draw_affine(geo_rng, shape, spacing, kind))
    tissue = shapes.brain_tissue(np.random.default_rng(anat_ss), shape)
    regions = shapes.tumour_regions(np.random.default_rng(tum_ss), tissue)
    tissue[regions["wt"]] = shapes.ED
    tissue[regions["ncr"]] = shapes.NCR
    tissue[regions["et"]] = shapes.ET
    images = _render(np.random.default_rng(img_ss), tissue)
    return Phantom(images, labels_from_regions(regions), affine, kind)


def labels_from_regions(regions: dict[str, np.ndarray]) -> np.ndarray:
    """BraTS 2018 label map (uint8) from the nested region masks."""
    seg = np.zeros(regions["wt"].shape, dtype=np.uint8)
    seg[regions["wt"]] = BRATS2018_LABELS["ed"]
    seg[regions["ncr"]] = BRATS2018_LABELS["ncr"]
    seg[regions["et"]] = BRATS2018_LABELS["et"]
    return seg


def _render(rng: np.random.Generator, tissue: np.ndarray) -> dict[str, np.ndarray]:
    """Turn the class map into four int16 modalities: contrast, blur, texture, bias, noise."""
    brain = tissue != shapes.BG
    texture = 1.0 + 0.04 * shapes.smooth_field(rng, tissue.shape, cells=16)
    images = {}
    for name in MODALITIES:
        lut = np.asarray(CONTRAST[name], dtype=np.float32) * SCALE[name]
        clean = ndi.gaussian_filter(lut[tissue], 0.6) * texture
        bias = np.exp(BIAS * shapes.smooth_field(rng, tissue.shape, cells=3))
        sigma = NOISE * SCALE[name]
        real = clean * bias + sigma * rng.standard_normal(tissue.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(tissue.shape, dtype=np.float32)
        magnitude = np.sqrt(real * real + imag * imag)
        out = np.clip(np.rint(magnitude), 1, np.iinfo(np.int16).max).astype(np.int16)
        out[~brain] = 0
        images[name] = out
    return images


def qform_representable(affine: np.ndarray) -> np.ndarray:
    """The affine as a NIfTI qform will decode it, rounded to float32 like the sform is stored.

    The qform stores a quaternion in float32 and recomputes its first component from the other
    three, which loses ~1e-3 near 180-degree rotations (an oblique LPS affine is one). Snapping
    the affine to what the quaternion can say keeps qform and sform equal within ~1e-6.
    """
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_qform(affine, code=1)
    return header.get_qform().astype(np.float32).astype(np.float64)


def write_reproducible(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a .nii.gz with sform and qform (code 1, like BraTS) equal to `affine`.

    The header follows io.nifti's rules; gzip with mtime=0 makes the file bytes depend on the
    content only, so reruns hash the same; writing through core.atomic means a killed run never
    leaves a half-written case file.
    """
    exact = as_affine_tuple(affine)
    geometry = Geometry(shape=tuple(int(s) for s in array.shape[:3]), affine=exact, qform=exact,
                        qform_code=1, sform_code=1)
    img = nifti_image(array, geometry, array.dtype)
    qform = img.header.get_qform()
    if not np.allclose(qform, img.header.get_sform(), atol=1e-5):
        raise RuntimeError(f"qform does not match sform for {path}:\n{qform}\n{affine}")
    with atomic_path(Path(path), durable=False) as tmp:
        tmp.write_bytes(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))


def synthesize_case(case_id: str, out_dir: Path, seed: int | Sequence[int],
                    shape: Sequence[int] = (96, 96, 64), spacing: Sequence[float] | None = None,
                    affine_kind: str | None = None) -> Path:
    """Write one phantom as `<out_dir>/<case_id>/<case_id>_<modality>.nii.gz`; return the folder."""
    phantom = make_phantom(seed, shape, spacing, affine_kind)
    case_dir = Path(out_dir) / case_id
    case_dir.mkdir(parents=True, exist_ok=True)
    for name, image in phantom.images.items():
        write_reproducible(image, phantom.affine, case_dir / f"{case_id}_{name}.nii.gz")
    write_reproducible(phantom.seg, phantom.affine, case_dir / f"{case_id}_seg.nii.gz")
    return case_dir


def synthesize_dataset(out: Path, cases: int, seed: int,
                       shape: Sequence[int] = (96, 96, 64)) -> list[Path]:
    """Write `cases` phantoms `Synth_0000`..; case i is seeded from (seed, i)."""
    return [synthesize_case(f"Synth_{i:04d}", Path(out), (seed, i), shape) for i in range(cases)]
