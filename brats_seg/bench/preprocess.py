"""`brats-seg bench preprocess`: our preprocessing vs the decode floor vs a MONAI reference chain.

All three sides process the same cases with the same number of processes, in one run:
- decode floor: nibabel reads and decompresses every file (t1, t1ce, t2, flair, seg), nothing else;
- ours: `run_preprocess` at native spacing into a fresh folder (everything: verify, crop, z-score, write);
- MONAI: LoadImaged -> EnsureChannelFirstd -> Orientationd -> CropForegroundd ->
  NormalizeIntensityd(nonzero, channel_wise) -> np.save of image and label.

The sides run in rounds (floor, ours, MONAI, floor, ours, ...) after one warm-up pass that fills
the page cache, so that load from other users of the machine hits every side alike; the table
gives medians over the rounds, and the CPU seconds (user + sys of the worker processes, which
other load does not inflate) as a second, steadier view of the same ratio.
"""
from __future__ import annotations

import itertools
import resource
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from brats_seg.bench.common import alternate, markdown_table, pool_map, save_report
from brats_seg.io.manifest import load_manifest, case_root, resolve_inside


def _case_files(raw_path: Path, data_roots: tuple[Path, ...] = ()) -> list[dict]:
    raw = load_manifest(raw_path, stage="raw")
    cases = []
    for case in raw["cases"]:
        root = case_root(raw_path, raw, case, data_roots)
        files = {c: str(resolve_inside(root, case["images"][c]["path"], case["id"], case.get("links"))) for c in case["channels"]}
        if case.get("seg"):
            files["seg"] = str(resolve_inside(root, case["seg"]["path"], case["id"], case.get("links")))
        cases.append({"id": case["id"], "files": files})
    return cases


def _decode_only(case: dict) -> int:
    import nibabel as nib

    return sum(int(np.asanyarray(nib.load(f).dataobj).size) for f in case["files"].values())


def _monai_case(job: tuple[dict, str]) -> None:
    import torch
    from monai import transforms as T

    torch.set_num_threads(1)
    case, out = job
    chain = T.Compose([
        T.LoadImaged(keys=["image", "label"], image_only=True),
        T.EnsureChannelFirstd(keys=["image", "label"]),
        T.Orientationd(keys=["image", "label"], axcodes="RAS"),
        T.CropForegroundd(keys=["image", "label"], source_key="image"),
        T.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
    ])
    files = case["files"]
    data = chain({"image": [files[c] for c in ("t1", "t1ce", "t2", "flair")], "label": files["seg"]})
    folder = Path(out) / case["id"]
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "image.npy", np.asarray(data["image"]))
    np.save(folder / "label.npy", np.asarray(data["label"]))


def _monai_all(cases: list[dict], out: Path, workers: int) -> None:
    pool_map(_monai_case, [(c, str(out)) for c in cases], workers)


SIDES = ("decode floor (nibabel)", "brats-seg preprocess", "MONAI chain")


def _cpu_seconds() -> float:
    """User + sys seconds of this process and its reaped children (the pools' workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _cpu_of(run: Callable[[], object]) -> Callable[[], float]:
    """`run` returning the CPU seconds it cost (the harness times its wall seconds)."""
    def measured() -> float:
        cpu = _cpu_seconds()
        run()
        return _cpu_seconds() - cpu
    return measured


def bench_preprocess(raw_path: Path, workers: int = 2, out: Path | None = None, rounds: int = 5,
                     data_roots: tuple[Path, ...] = ()) -> dict:
    """Time the three sides in `rounds` alternating rounds; print the table, write `out`, return the report.
    data_roots: where the raw manifest's roots may lie besides its own folder (--data-root)."""
    from brats_seg.preprocess.case import PreprocessConfig
    from brats_seg.preprocess.stage import run_preprocess

    cases = _case_files(raw_path, data_roots)
    n = len(cases)
    scratch = Path(tempfile.mkdtemp(prefix="brats-bench-"))
    fresh = (scratch / str(i) for i in itertools.count())  # a fresh folder per run, so ours never skips
    sides = {SIDES[0]: lambda: pool_map(_decode_only, cases, workers),
             SIDES[1]: lambda: run_preprocess(raw_path, next(fresh), PreprocessConfig(), workers,
                                              data_roots=data_roots),
             SIDES[2]: lambda: _monai_all(cases, next(fresh), workers)}
    try:
        pool_map(_decode_only, cases, workers)  # warm the page cache equally for all sides
        calls = alternate({side: _cpu_of(run) for side, run in sides.items()}, rounds,
                          before_block=lambda side: _clear(scratch) if side == SIDES[0] else None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    runs = {side: [(c.seconds, c.value) for c in side_calls] for side, side_calls in calls.items()}
    return _report(runs, n, workers, rounds, out)


def _clear(scratch: Path) -> None:
    """Drop the last round's outputs before the next round (disk space, page cache)."""
    for child in scratch.iterdir():
        shutil.rmtree(child, ignore_errors=True)


def _report(runs: dict[str, list[tuple[float, float]]], n: int, workers: int, rounds: int, out: Path | None) -> dict:
    wall = {side: statistics.median(w for w, _ in r) for side, r in runs.items()}
    cpu = {side: statistics.median(c for _, c in r) for side, r in runs.items()}
    floor, ours, monai = (wall[s] for s in SIDES)
    report = {"cases": n, "workers": workers, "rounds": rounds,
              "seconds": {"decode_floor": floor, "ours": ours, "monai": monai},
              "cpu_seconds": {"decode_floor": cpu[SIDES[0]], "ours": cpu[SIDES[1]], "monai": cpu[SIDES[2]]},
              "rounds_seconds": {side: [round(w, 3) for w, _ in r] for side, r in runs.items()},
              "ours_vs_floor": ours / floor, "monai_vs_ours": monai / ours,
              "ours_vs_floor_cpu": cpu[SIDES[1]] / cpu[SIDES[0]], "monai_vs_ours_cpu": cpu[SIDES[2]] / cpu[SIDES[1]]}
    rows = [[side, f"{wall[side]:.2f}", f"{cpu[side]:.2f}", f"{60 * n / wall[side]:.1f}"] for side in SIDES]
    table = markdown_table(["side", "wall s (median)", "CPU s (median)", "cases/min"], rows)
    table += f"\n\nours / decode floor = {report['ours_vs_floor']:.2f}x wall, {report['ours_vs_floor_cpu']:.2f}x CPU " \
             f"(target <= 1.3); MONAI / ours = {report['monai_vs_ours']:.2f}x wall, " \
             f"{report['monai_vs_ours_cpu']:.2f}x CPU (target >= 2) — {n} cases, {workers} processes, " \
             f"medians of {rounds} alternating rounds"
    save_report(out, report, table)
    return report
