"""Tiny preprocessed datasets for the training tests, written straight in the store layout.

Each case is a noisy (4, S, S, S) volume with one spherical tumour: ED shell, ET ring, NCR centre.
Channel 0 is bright over the whole tumour, channel 1 over the core (NCR+ET), channel 2 over ET,
channel 3 is noise only, so a tiny network learns the regions in a few dozen steps.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from brats_seg.io.manifest import new_manifest, save_manifest
from brats_seg.core.hashing import sha256_file
from brats_seg.preprocess.store import case_dir

REPO = Path(__file__).resolve().parents[1]
CHANNELS = ["t1", "t1ce", "t2", "flair"]


def make_case(rng: np.random.Generator, shape: tuple[int, int, int], radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(image float16 (4, *shape), seg uint8 (*shape)) with one tumour at a random position."""
    centre = [rng.uniform(radius + 1, s - radius - 1) for s in shape]
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    seg = np.zeros(shape, np.uint8)
    seg[dist < radius] = 2
    seg[dist < 0.65 * radius] = 3
    seg[dist < 0.35 * radius] = 1
    image = rng.normal(0.0, 0.3, size=(4, *shape)).astype(np.float32)
    image[0] += 2.0 * (seg > 0)
    image[1] += 2.0 * np.isin(seg, (1, 3))
    image[2] += 2.0 * (seg == 3)
    return image.astype(np.float16), seg


def foreground_rows(seg: np.ndarray, rng: np.random.Generator, per_class: int = 200) -> np.ndarray:
    rows = []
    for cls in (1, 2, 3):
        vox = np.argwhere(seg == cls)
        if len(vox):
            pick = vox[rng.choice(len(vox), size=min(per_class, len(vox)), replace=False)]
            rows.append(np.concatenate([np.full((len(pick), 1), cls), pick], axis=1))
    return np.concatenate(rows).astype(np.int32) if rows else np.zeros((0, 4), np.int32)


def write_case(root: Path, case_id: str, image: np.ndarray, seg: np.ndarray | None, fg: np.ndarray | None) -> dict:
    folder = case_dir(root, case_id)
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"id": case_id, "image": f"cases/{case_id}/image.npy", "seg": None, "fg": None,
             "shape": list(image.shape[1:]), "spacing": [2.0, 2.0, 2.0], "channels": CHANNELS,
             "sha256": {}, "source": {"raw_id": case_id}}
    # store layout: image (X, Y, Z, C) and seg (X, Y, Z) in Fortran order; readers see (C, X, Y, Z)
    np.save(folder / "image.npy", np.asfortranarray(np.moveaxis(image, 0, -1)))
    entry["sha256"]["image"] = sha256_file(folder / "image.npy")
    for key, arr in (("seg", seg), ("fg", fg)):
        if arr is not None:
            np.save(folder / f"{key}.npy", np.asfortranarray(arr) if key == "seg" else arr)
            entry[key] = f"cases/{case_id}/{key}.npy"
            entry["sha256"][key] = sha256_file(folder / f"{key}.npy")
    return entry


def make_dataset(root: Path, n_cases: int = 4, shape: tuple[int, int, int] = (24, 24, 24), seed: int = 0,
                 radius: float = 6.0) -> Path:
    """Write n_cases labelled cases + preprocessed.json under root; returns the manifest path."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    manifest = new_manifest("preprocessed", {"spacing": [2.0, 2.0, 2.0], "fixture": True})
    for i in range(n_cases):
        image, seg = make_case(rng, shape, radius)
        manifest["cases"].append(write_case(root, f"case{i:03d}", image, seg, foreground_rows(seg, rng)))
    path = root / "preprocessed.json"
    save_manifest(path, manifest)
    return path


# Tiny 3D model and steps for subprocess and in-process runs (CPU, one thread).
TINY = ["model.features=[4,8,16]", "model.deep_supervision=true", "data.patch_size=[16,16,16]",
        "data.batch_size=2", "data.num_workers=0", "data.folds=2", "train.num_threads=1",
        "train.progress=false", "train.log_every_steps=1", "validation.every_epochs=1",
        "validation.sw_batch_size=4", "optim.name=adamw", "optim.lr=0.01", "optim.weight_decay=0.0",
        "schedule.name=constant"]


def cli_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def start_cli(args: list[str], **kw) -> subprocess.Popen:
    """`python -m brats_seg ARGS` in its own process group, stdout and stderr piped (text)."""
    return subprocess.Popen([sys.executable, "-m", "brats_seg", *args], cwd=REPO, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float) -> list[str]:
    """Read proc.stdout until a line contains `needle`; the lines read (fails on EOF or timeout)."""
    import selectors

    lines: list[str] = []
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
            break
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    kill_group(proc)
    err = proc.stderr.read() if proc.stderr else ""
    raise AssertionError(f"{needle!r} not seen in output; stdout:\n{''.join(lines)}\nstderr:\n{err[-3000:]}")


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
