"""Shared fixtures: tiny valid BraTS-like cases on disk, the shared real datasets, the CLI in-process.

Keep this file small and generic. Volumes are tiny (24x20x16) so the whole suite stays fast.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

try:  # two shared CPU cores: one torch thread per test process
    import torch

    torch.set_num_threads(1)
except ImportError:  # torch is optional for the io/ingest tests
    pass

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"
SHAPE = (24, 20, 16)
# LPS like real BraTS: voxel -> RAS with x and y flipped, 1 mm
BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, SHAPE[1] - 1.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
# file-name suffix of each channel (and of the label map) per on-disk layout
LAYOUT_NAMES = {
    "brats2021": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "brats2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}
DEFAULT_LABELS = {"brats2021": (0, 1, 2, 4), "brats2023": (0, 1, 2, 3), "msd": (0, 1, 2, 3)}


def save_nifti(path, data, affine=None, qform_code: int = 1, sform_code: int = 1, qform=None) -> Path:
    """Write `data` as NIfTI-1 with explicit qform/sform (qform defaults to the affine)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = BRATS_AFFINE if affine is None else np.asarray(affine, dtype=float)
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.set_sform(affine if sform_code else None, code=sform_code)
    img.set_qform((affine if qform is None else np.asarray(qform, dtype=float)) if qform_code else None, code=qform_code)
    nib.save(img, str(path))
    return path


def phantom(shape=SHAPE, seed: int = 0, channel: int = 0) -> np.ndarray:
    """A brain-like block (zero outside) with positive random intensities; float32."""
    rng = np.random.default_rng(seed * 7 + channel)
    img = np.zeros(shape, np.float32)
    inner = tuple(slice(2, max(3, s - 2)) for s in shape)
    img[inner] = rng.uniform(50.0, 150.0, img[inner].shape).astype(np.float32) * (1 + 0.2 * channel)
    return img


def label_map(shape=SHAPE, labels=(0, 1, 2, 4)) -> np.ndarray:
    """Nested blobs carrying the given non-zero label values in the middle of the volume (uint8)."""
    seg = np.zeros(shape, np.uint8)
    values = [v for v in labels if v != 0]
    centre = [s // 2 for s in shape]
    for i, v in enumerate(values):  # outer region first, inner ones overwrite it
        r = max(1, 6 - 2 * i)
        box = tuple(slice(max(0, c - r), c + r) for c in centre)
        seg[box] = v
    return seg


def make_case(folder, case_id: str, shape=SHAPE, affine=None, labels=None, layout: str = "brats2021",
              seed: int = 0, suffix: str = ".nii.gz", seg: bool = True) -> Path:
    """Write one small valid case into folder/case_id/ and return that case folder.

    layout 'brats2021' writes <case>_{t1,t1ce,t2,flair,seg}; 'brats2023' writes <case>-{t1n,t1c,t2w,t2f,seg}.
    labels: the non-zero values drawn into the label map (default: the layout's convention);
    seg=False writes no label map (an inference-only case). suffix: '.nii.gz' or '.nii'.
    """
    names = LAYOUT_NAMES[layout]
    case_dir = Path(folder) / case_id
    case_dir.mkdir(parents=True, exist_ok=True)
    for i, channel in enumerate(("t1", "t1ce", "t2", "flair")):
        save_nifti(case_dir / f"{case_id}{names[channel]}{suffix}", phantom(shape, seed, i), affine)
    if seg:
        values = DEFAULT_LABELS[layout] if labels is None else labels
        save_nifti(case_dir / f"{case_id}{names['seg']}{suffix}", label_map(shape, values), affine)
    return case_dir


def gzip_bytes(raw: bytes) -> bytes:
    co = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip container
    return co.compress(raw) + co.flush()


@pytest.fixture(name="make_case")
def make_case_fixture():
    """The `make_case(folder, case_id, shape=..., affine=..., labels=..., layout=...)` writer."""
    return make_case


@pytest.fixture(name="save_nifti")
def save_nifti_fixture():
    return save_nifti


@pytest.fixture
def shared_datasets() -> Path:
    """../shared/datasets next to the repository; skips the test when it is absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real datasets not available: {SHARED_DATASETS} is absent")
    return SHARED_DATASETS


@pytest.fixture
def run_cli(capsys):
    """Run `brats_seg.cli.main(argv)` in-process; returns (exit code, stdout, stderr)."""
    from brats_seg.cli import main

    def run(*argv):
        capsys.readouterr()
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(autouse=True)
def _locale_unchanged():
    """No code path may leave the process locale changed (GDCM sets LC_ALL to "C", after which
    Python reads and writes every text file as ASCII): a test that does so fails here."""
    import locale

    before = locale.getpreferredencoding(False)
    yield
    after = locale.getpreferredencoding(False)
    if after != before:
        locale.setlocale(locale.LC_ALL, "")
        pytest.fail(f"the process text encoding changed from {before} to {after} during this test")
