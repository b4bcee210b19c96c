"""`brats-seg bench preprocess`: our preprocessing vs the decode floor vs a MONAI reference chain.

All three sides process the same cases with the same number of processes, in one run:
- decode floor: nibabel reads and decompresses every file (t1, t1ce, t2, flair, seg), nothing else;
- ours: `run_preprocess` at native spacing into a fresh folder (everything: verify, crop, z-score, write);
- MONAI: LoadImaged -> EnsureChannelFirstd -> Orientationd -> CropForegroundd ->
  NormalizeIntensityd(nonzero, channel_wise) -> np.save of image and label.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from brats_seg.bench.common import markdown_table, pool_map, save_report, timed
from brats_seg.manifest import load_manifest, manifest_root, resolve_inside


def _case_files(raw_path: Path) -> list[dict]:
    raw = load_manifest(raw_path, stage="raw")
    cases = []
    for case in raw["cases"]:
        root = manifest_root(raw_path, raw, case["root"])
        files = {c: str(resolve_inside(root, case["images"][c]["path"], case["id"])) for c in case["channels"]}
        if case.get("seg"):
            files["seg"] = str(resolve_inside(root, case["seg"]["path"], case["id"]))
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


def bench_preprocess(raw_path: Path, workers: int = 2, out: Path | None = None) -> dict:
    from brats_seg.preprocess.case import PreprocessConfig
    from brats_seg.preprocess.stage import run_preprocess

    cases = _case_files(raw_path)
    n = len(cases)
    scratch = Path(tempfile.mkdtemp(prefix="brats-bench-"))
    try:
        pool_map(_decode_only, cases[:workers], workers)  # warm the page cache equally for all sides
        t_floor, _ = timed(pool_map, _decode_only, cases, workers)
        t_ours, _ = timed(run_preprocess, raw_path, scratch / "ours", PreprocessConfig(), workers)
        t_monai, _ = timed(pool_map, _monai_case, [(c, str(scratch / "monai")) for c in cases], workers)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {"cases": n, "workers": workers, "seconds": {"decode_floor": t_floor, "ours": t_ours, "monai": t_monai},
              "ours_vs_floor": t_ours / t_floor, "monai_vs_ours": t_monai / t_ours}
    rows = [[name, f"{t:.2f}", f"{60 * n / t:.1f}"] for name, t in
            (("decode floor (nibabel)", t_floor), ("brats-seg preprocess", t_ours), ("MONAI chain", t_monai))]
    table = markdown_table(["side", "seconds", "cases/min"], rows)
    table += f"\n\nours / decode floor = {report['ours_vs_floor']:.2f}x (target <= 1.3); " \
             f"MONAI / ours = {report['monai_vs_ours']:.2f}x faster (target >= 2) — {n} cases, {workers} processes"
    save_report(out, report, table)
    return report
