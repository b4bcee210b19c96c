"""`bench train`'s loader part: training samples one core draws per second for a recipe (by default
the GPU recipe: 1 mm, 128^3 patches, its augmentation) on one real case, preprocessed here at the
recipe's spacing by the real preprocess stage, against the previous rotated-patch reader in the
same run (`reference_warped_patch`: the whole rotated bounding box, zeros outside the volume
included, resampled by torch's grid_sample).

One process, torch.set_num_threads(1): a loader worker runs so. Both contenders draw the same keys
(same centres, matrices and intensity draws) in alternating blocks (bench.common.alternate). "Per
core" is CPU seconds (time.process_time), which a busy neighbour inflates far less than wall time;
wall seconds are reported beside it. Means, not medians: the rate that feeds a GPU is the mean over
the mix of plain crops and rotated or zoomed patches.
"""
from __future__ import annotations

import contextlib
import copy
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from brats_seg.bench.common import alternate
from brats_seg.seg3d.config import load_config
from brats_seg.seg3d.data import open_dataset, patch_dataset
from brats_seg.seg3d.patches import CaseArrays, bounding_box, inside_box, read_region, warped_patch

TARGET_SAMPLES_PER_S = 4.0  # 4 workers x 4 samples/s keep a 0.5 s step of 2 patches fed
STEP_S, STEP_BATCH = 0.5, 2


def reference_warped_patch(case: CaseArrays, centre: np.ndarray, matrix: np.ndarray,
                           patch: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """The reader before issue #14: the whole bounding box (zeros outside the volume included) read
    as float32 (C, X, Y, Z), a normalised float32 grid, bilinear / nearest grid_sample."""
    import torch.nn.functional as F

    lo, size = bounding_box(centre, matrix, patch)
    scale = 2.0 / (np.asarray(size, np.float64) - 1.0)
    a = (matrix.T * scale[None, :])[:, ::-1]  # offsets (row vector) -> normalised, reversed axes
    b = ((np.asarray(centre, np.float64) - lo) * scale - 1.0)[::-1]
    axes = [torch.arange(p, dtype=torch.float32) - p // 2 for p in patch]
    offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    grid = (offsets @ torch.from_numpy(a.astype(np.float32).copy()) + torch.from_numpy(b.astype(np.float32).copy()))
    grid = grid.reshape(1, *patch, 3)

    def sample(region: np.ndarray, mode: str) -> np.ndarray:
        out = F.grid_sample(torch.from_numpy(region)[None], grid, mode=mode, padding_mode="zeros", align_corners=True)
        return out[0].numpy()

    image = sample(read_region(case.image, lo, size).astype(np.float32), "bilinear")
    label = None
    if case.seg is not None:
        label = sample(read_region(case.seg, lo, size).astype(np.float32)[None], "nearest")[0].round().astype(np.uint8)
    return image, label


class _TimedWarp:
    """A warp that counts its calls, their CPU seconds and the largest region it read (bytes)."""

    def __init__(self, warp: Callable, clipped: bool) -> None:
        self.warp, self.clipped = warp, clipped
        self.calls, self.cpu_s, self.max_region_bytes = 0, 0.0, 0

    def __call__(self, case: CaseArrays, centre: np.ndarray, matrix: np.ndarray, patch: tuple[int, int, int]):
        start = time.process_time()
        out = self.warp(case, centre, matrix, patch)
        self.cpu_s += time.process_time() - start
        self.calls += 1
        box = inside_box(centre, matrix, patch, case.shape) if self.clipped else bounding_box(centre, matrix, patch)
        voxels = 0 if box is None else math.prod(box[1])
        self.max_region_bytes = max(self.max_region_bytes, voxels * case.image.shape[0] * 4)
        return out


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def preprocess_one(case_dir: Path, folder: Path, spacing: tuple[float, float, float] | str) -> Path:
    """Ingest and preprocess one case folder (read in place) into `folder`; its preprocessed.json."""
    from brats_seg.ingest.stage import ingest
    from brats_seg.preprocess.case import PreprocessConfig
    from brats_seg.preprocess.stage import run_preprocess

    case_dir = Path(case_dir).resolve()
    ingest([case_dir], folder / "raw.json")
    run_preprocess(folder / "raw.json", folder / "pp", PreprocessConfig(spacing=spacing), workers=1,
                   data_roots=(case_dir,))
    return folder / "pp" / "preprocessed.json"


def bench_loader(case_dir: Path, config: Path | None, overrides: Sequence[str] = (),
                 spacing: tuple[float, float, float] | str = (1.0, 1.0, 1.0), samples: int = 64,
                 block: int = 8) -> dict[str, Any]:
    """Samples per CPU second of PatchDataset.__getitem__, ours against the reference reader."""
    cfg = load_config(config, [*overrides, "data.fold=-1"])
    with tempfile.TemporaryDirectory(prefix="brats-bench-loader-") as tmp, _one_thread():
        data = open_dataset(preprocess_one(case_dir, Path(tmp), spacing), cfg)
        ours = patch_dataset(data, cfg, 1)
        reference = copy.copy(ours)
        warps = {"patches": _TimedWarp(warped_patch, True), "reference": _TimedWarp(reference_warped_patch, False)}
        ours.warp, reference.warp = warps["patches"], warps["reference"]
        datasets = {"patches": ours, "reference": reference}
        for ds in datasets.values():  # warm-up, untimed: opens the case, fills the page cache
            ds[(1, 0, 0)]
        for warp in warps.values():
            warp.calls, warp.cpu_s = 0, 0.0
        rounds = max(1, math.ceil(samples / block))
        calls = alternate({name: _drawer(ds) for name, ds in datasets.items()}, rounds, block)
        result: dict[str, Any] = {name: _rates(c, warps[name]) for name, c in calls.items()}
        result.update(_agreement(ours, reference, block))
    result.update({"case": Path(case_dir).name, "spacing": spacing if isinstance(spacing, str) else list(spacing), "config": str(config),
                   "patch_size": list(cfg.data.patch_size), "samples": rounds * block, "threads": 1})
    result["speedup"] = result["reference"]["cpu_s_per_sample"] / result["patches"]["cpu_s_per_sample"]
    result["target_samples_per_s"] = TARGET_SAMPLES_PER_S
    result["workers_for_step"] = math.ceil(STEP_BATCH / STEP_S / result["patches"]["samples_per_cpu_s"])
    return result


def _drawer(ds) -> Callable[[], float]:
    """Draws keys (0, 0, 0), (0, 0, 1), ... one per call; returns the call's CPU seconds."""
    state = {"index": 0}

    def draw() -> float:
        start = time.process_time()
        ds[(0, 0, state["index"])]
        state["index"] += 1
        return time.process_time() - start
    return draw


def _rates(calls: list, warp: _TimedWarp) -> dict[str, float]:
    cpu = sum(c.value for c in calls) / len(calls)
    wall = sum(c.seconds for c in calls) / len(calls)
    return {"cpu_s_per_sample": cpu, "samples_per_cpu_s": 1.0 / cpu, "wall_s_per_sample": wall,
            "samples_per_wall_s": 1.0 / wall, "warped_fraction": warp.calls / len(calls),
            "warped_cpu_ms": 1000 * warp.cpu_s / max(1, warp.calls), "max_region_mb": warp.max_region_bytes / 1e6}


def _agreement(ours, reference, count: int) -> dict[str, float]:
    """How far our samples are from the reference's on the same keys (float rounding, and nearest
    ties on labels): the largest image difference and the share of label voxels that differ."""
    diff, labels, voxels = 0.0, 0, 0
    for i in range(count):
        a, b = ours[(0, 0, i)], reference[(0, 0, i)]
        diff = max(diff, float((a["image"] - b["image"]).abs().max()))
        labels += int((a["label"] != b["label"]).sum())
        voxels += a["label"].numel()
    return {"max_image_difference": diff, "label_disagreement": labels / voxels}
