"""Helpers for the preprocessing tests: synthetic inputs, CLI runners, geometry checks, file snapshots.

Plain functions (no fixtures) so the unit, integration, fault and realdata modules can share them
without touching conftest.py. Inputs come from brats_seg.synth.phantoms (BraTS 2018 layout, LPS / RAS /
oblique affines) or, for the big fault-test volumes, from `write_block_case` (fast, uncompressed).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from brats_seg.synth import phantoms as synth

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"
CHANNELS = ("t1", "t1ce", "t2", "flair")
SUMMARY = re.compile(r"preprocess: (\d+) done, (\d+) skipped, (\d+) failed")


# ---------------------------------------------------------------------------------------------- inputs

def write_synth_case(folder: Path, case_id: str, seed, shape=(48, 48, 32), kind: str | None = None,
                     spacing=None, perm=(0, 1, 2)) -> Path:
    """One synth phantom as <folder>/<case_id>/<case_id>_{t1,t1ce,t2,flair,seg}.nii.gz.

    `perm` stores the arrays with their axes permuted and the affine's columns permuted to match:
    the same world image, a different file layout (exercises the transposes of reorientation).
    """
    ph = synth.make_phantom(seed, shape, spacing, kind)
    perm = tuple(perm)
    affine = ph.affine.copy()
    affine[:3, :3] = ph.affine[:3, :3][:, list(perm)]
    case_dir = Path(folder) / case_id
    case_dir.mkdir(parents=True, exist_ok=True)
    for name, image in ph.images.items():
        synth.write_reproducible(np.ascontiguousarray(np.transpose(image, perm)), affine, case_dir / f"{case_id}_{name}.nii.gz")
    synth.write_reproducible(np.ascontiguousarray(np.transpose(ph.seg, perm)), affine, case_dir / f"{case_id}_seg.nii.gz")
    return case_dir


def write_block_case(folder: Path, case_id: str, shape=(160, 160, 128), seed: int = 0) -> Path:
    """A big, cheap case (uncompressed .nii, LPS 1 mm): an ellipsoid brain of random intensities,
    nested spherical tumour labels {2, 1, 4}. Used where volume size matters more than realism."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    centre = [n / 2 for n in shape]
    rho = sum(((g - c) / (0.42 * n)) ** 2 for g, c, n in zip(grid, centre, shape))
    brain = rho < 1
    tumour_centre = [c + 0.1 * n for c, n in zip(centre, shape)]
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, tumour_centre)))
    seg = np.zeros(shape, np.uint8)
    radius = 0.12 * min(shape)
    seg[(dist < radius) & brain] = 2
    seg[(dist < 0.6 * radius) & brain] = 4
    seg[(dist < 0.3 * radius) & brain] = 1
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [shape[0] / 2, shape[1] / 2, -shape[2] / 2]
    case_dir = Path(folder) / case_id
    case_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(CHANNELS):
        image = rng.integers(1, 1000 * (i + 1), size=shape, dtype=np.int16)
        image[~brain] = 0
        _save_nifti(image, affine, case_dir / f"{case_id}_{name}.nii")
    _save_nifti(seg, affine, case_dir / f"{case_id}_seg.nii")
    return case_dir


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))


def rewrite_channel(case_dir: Path, channel: str, delta: int = 7) -> Path:
    """Change one input file (a brain voxel gets brighter), keeping shape and geometry."""
    path = next(Path(case_dir).glob(f"*_{channel}.nii*"))
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj).copy()
    idx = tuple(int(v[len(v) // 2]) for v in np.nonzero(data))
    data[idx] += delta
    if path.name.endswith(".nii.gz"):
        synth.write_reproducible(data, img.affine, path)
    else:
        _save_nifti(data, img.affine, path)
    return path


def ingest_to(sources, raw_path: Path) -> dict:
    from brats_seg.ingest.stage import ingest

    return ingest([Path(s) for s in sources], Path(raw_path))


# ---------------------------------------------------------------------------------------------- running

def run_cli(*argv) -> tuple[int, str, str]:
    """`brats_seg.cli.main(argv)` in this process; returns (exit code, stdout, stderr)."""
    from brats_seg.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def cli_command(*argv) -> list[str]:
    return [sys.executable, "-m", "brats_seg", *[str(a) for a in argv]]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_cli_subprocess(*argv, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*argv), capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env(), cwd=str(REPO_ROOT))


def summary_counts(stderr: str) -> tuple[int, int, int]:
    """(done, skipped, failed) from the stage's final summary line."""
    found = SUMMARY.findall(stderr)
    assert found, f"no summary line in stderr:\n{stderr}"
    return tuple(int(v) for v in found[-1])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- reading

def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def without_created_at(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "created_at"}


def raw_case_files(raw_path: Path, data_roots=()) -> dict[str, dict[str, Path]]:
    """case id -> {'t1': Path, ..., 'seg': Path, 'convention': str} resolved through the raw manifest
    (data_roots: as --data-root, for roots outside the manifest's folder)."""
    from brats_seg.io.manifest import manifest_root

    raw = load_json(raw_path)
    out = {}
    for case in raw["cases"]:
        root = manifest_root(raw_path, raw, case["root"], data_roots)
        files = {c: root / case["images"][c]["path"] for c in case["channels"]}
        if case.get("seg"):
            files["seg"] = root / case["seg"]["path"]
        files["convention"] = case.get("label_convention")
        out[case["id"]] = files
    return out


def load_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine


def native_voxel_map(entry: dict, original_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every voxel of a native-spacing preprocessed case, the original file voxel at the same world point.

    Computed only from the two affines (the entry's "affine" and the original file's), never from
    the stage's own bookkeeping; asserts that every voxel centre lands on an original voxel centre.
    Returns index arrays (i, j, k) shaped like the preprocessed volume.
    """
    shape = tuple(entry["shape"])
    to_orig = np.linalg.inv(original_affine) @ np.asarray(entry["affine"], dtype=float)
    grid = np.indices(shape, dtype=float).reshape(3, -1)
    q = to_orig[:3, :3] @ grid + to_orig[:3, 3:4]
    rounded = np.rint(q)
    err = float(np.abs(q - rounded).max())
    assert err < 1e-3, f"{entry['id']}: preprocessed voxel centres miss original voxel centres by up to {err} voxels"
    return tuple(rounded[a].astype(int).reshape(shape) for a in range(3))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


# ---------------------------------------------------------------------------------------------- output files

def final_npy_files(out_dir: Path) -> list[str]:
    """Relative paths of the arrays under their final names (hidden temp files excluded)."""
    cases = Path(out_dir) / "cases"
    return sorted(p.relative_to(out_dir).as_posix() for p in cases.rglob("*.npy") if not p.name.startswith("."))


def file_states(out_dir: Path) -> dict[str, tuple[int, int]]:
    """rel path -> (inode, mtime_ns) of every visible file under cases/ (a rewrite changes the inode)."""
    cases = Path(out_dir) / "cases"
    return {p.relative_to(out_dir).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(cases.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def changed_cases(before: dict, after: dict) -> set[str]:
    """Case ids with any file added, removed or rewritten between two `file_states` snapshots."""
    keys = set(before) | set(after)
    return {k.split("/")[1] for k in keys if before.get(k) != after.get(k)}
