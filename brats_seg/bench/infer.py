"""`brats-seg bench infer`: our `predict` against a MONAI reference running the same model and weights.

Both sides segment one case end to end (reading included) with cubic windows of the same size
(128 by default), overlap 0.5, Gaussian blending and no TTA:
- ours: `Segmenter.from_run` with the window forced to the benchmark size (and no grown windows,
  so every window is window³ as on the reference side), `.predict(case_dir)`;
- MONAI: LoadImaged -> EnsureChannelFirstd -> Orientationd(RAS) -> NormalizeIntensityd(nonzero,
  channel_wise) -> sliding_window_inference over the whole volume -> activation -> labels, turned
  back from RAS to the file's axes so both label maps sit on the same grid.

Each side lives in its own spawned process (peak RSS is then per side, and neither inherits the
other's caches); one untimed warm-up run each, then timed runs alternate ours, MONAI, ours, ... so
that load from other users of the machine hits both alike; medians are reported. The network's
share of the machine is its FLOP/s (FlopCounterMode on a meta-device copy of the model, per window
shape actually run, multiply-add = 2) over the best fp32 matmul FLOP/s measured in the same run.
Afterwards, untimed: why the two label maps differ (see infer_checks.py).
"""
from __future__ import annotations

import math
import multiprocessing as mp
import resource
import statistics
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from brats_seg.bench.common import alternate, markdown_table, save_report
from brats_seg.bench.infer_checks import diagnose, region_agreement

SIDES = ("ours", "monai")
TARGETS = {"ratio_max": 0.33, "agreement_min": 0.98, "ours_rss_gb_max": 3.0}
Shape = tuple[int, ...]


# ---- pure helpers ---------------------------------------------------------------------------------

def monai_window_count(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Windows MONAI's sliding_window_inference runs on a volume of `shape` (its scan, counted).

    MONAI pads every axis to at least the roi, steps int(roi * (1 - overlap)) (roi itself when the
    axis equals the roi), and stops at the first window reaching the end of the axis.
    """
    total = 1
    for size, r in zip(shape, roi):
        size = max(int(size), int(r))
        step = r if size == r else max(int(r * (1.0 - overlap)), 1)
        total *= next(d for d in range(math.ceil(size / step) + 1) if d * step + r >= size) + 1
    return total


def ras_to_file(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Undo MONAI's Orientation(axcodes='RAS') on the last three axes (flips and transposes only)."""
    import nibabel as nib

    file_ornt = nib.orientations.io_orientation(affine)
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), file_ornt)
    lead = array.ndim - 3
    moved = np.moveaxis(array, range(lead), range(-lead, 0)) if lead else array
    out = nib.orientations.apply_orientation(moved, back)
    return np.ascontiguousarray(np.moveaxis(out, range(-lead, 0), range(lead)) if lead else out)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# ---- measurements in the parent ----------------------------------------------------------------

def matmul_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n @ n x n matmul with `threads` threads: the practical peak."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool and kernel selection
    best = min(c.seconds for c in alternate({"mm": lambda: torch.mm(a, b)}, repeats)["mm"])
    return 2.0 * n ** 3 / best / 1e9


def forward_gflop(model: Path, shapes: Sequence[Shape]) -> dict[Shape, float]:
    """GFLOP of one forward per window shape (B, C, X, Y, Z), counted on the meta device (no compute)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from brats_seg.engine.checkpoint import load_inference_model
    from brats_seg.infer.runs import checkpoint_file

    net, _ = load_inference_model(checkpoint_file(Path(model)), "cpu")
    net = net.to("meta")
    out = {}
    for shape in shapes:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            net(torch.empty(shape, device="meta"))
        out[tuple(shape)] = counter.get_total_flops() / 1e9
    return out


# ---- the two sides, each run inside its own worker process ---------------------------------------

def _counting(forward: Callable, seen: Counter) -> Callable:
    """`forward` that also counts the input shapes (B, C, X, Y, Z) it is called with, once per call."""
    def wrapped(x):
        seen[tuple(int(v) for v in x.shape)] += 1
        return forward(x)
    return wrapped


def _with_cpu(run: Callable[[], dict]) -> Callable[[], dict]:
    """`run` plus the CPU seconds (user, sys) and minor page faults it cost: robust to a loaded machine."""
    def measured() -> dict:
        before = resource.getrusage(resource.RUSAGE_SELF)
        result = run()
        after = resource.getrusage(resource.RUSAGE_SELF)
        return {**result, "cpu_user_s": after.ru_utime - before.ru_utime,
                "cpu_sys_s": after.ru_stime - before.ru_stime, "minor_faults": after.ru_minflt - before.ru_minflt}
    return measured


def _ours_runner(model: Path, case: Path, window: int) -> Callable[[], dict]:
    """Our predict with every window window³ (grow off), overlap 0.5, no TTA."""
    import dataclasses

    from brats_seg.infer.segmenter import Segmenter

    loaded = Segmenter.from_run(model)
    spec = dataclasses.replace(loaded.spec, patch_size=(window,) * 3)
    seg = Segmenter(loaded.model, spec, overlap=0.5, tta=False, grow=0.0)
    seen: Counter = Counter()
    seg._forward = _counting(seg._forward, seen)  # instance attribute: predict passes self._forward

    def run() -> dict:
        seen.clear()
        start = time.perf_counter()
        result = seg.predict(case)
        wall = time.perf_counter() - start
        return {"wall_s": wall, "network_s": result.timings["network_s"], "timings": result.timings,
                "windows": dict(seen), "labels": result.labels}
    return run


def case_files(case: Path, channels: Sequence[str]) -> list[str]:
    """The case folder's image files in the model's channel order (discovery as predict does it)."""
    from brats_seg.errors import InputError
    from brats_seg.ingest.layouts import discover

    specs = discover(Path(case), "auto", tuple(channels))
    if len(specs) != 1 or any(len(specs[0].images.get(c, [])) != 1 for c in channels):
        raise InputError(case, f"expected one case folder with one image per channel {list(channels)}")
    return [str(specs[0].images[c][0][0]) for c in channels]


def monai_chain():
    """The reference's loading chain: files stacked as channels, RAS, z-score over nonzero voxels."""
    from monai import transforms as T

    with warnings.catch_warnings():  # Orientationd's FutureWarning about its `labels` default
        warnings.simplefilter("ignore", FutureWarning)
        return T.Compose([T.LoadImaged(keys="image", image_only=True), T.EnsureChannelFirstd(keys="image"),
                          T.Orientationd(keys="image", axcodes="RAS"),
                          T.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)])


def monai_predict(files: Sequence[str], chain, forward: Callable, window: int, mode: str) -> tuple[np.ndarray, dict]:
    """The reference end to end: canonical uint8 labels in the file's axes, and its network seconds."""
    image = chain({"image": list(files)})["image"]
    start = time.perf_counter()
    labels = _monai_labels(image, forward, window, mode)
    network = time.perf_counter() - start
    labels = ras_to_file(labels, np.asarray(image.meta["original_affine"], dtype=float))
    return labels, {"network_s": network, "ras_shape": [int(v) for v in image.shape[1:]]}


def _monai_runner(model: Path, case: Path, window: int) -> Callable[[], dict]:
    """MONAI's chain and sliding_window_inference over the whole volume, with the same weights."""
    from brats_seg.engine.checkpoint import load_inference_model
    from brats_seg.infer.runs import checkpoint_file

    net, meta = load_inference_model(checkpoint_file(Path(model)), "cpu")
    files, chain = case_files(case, meta["channels"]), monai_chain()
    seen: Counter = Counter()
    forward = _counting(net, seen)

    def run() -> dict:
        seen.clear()
        start = time.perf_counter()
        labels, info = monai_predict(files, chain, forward, window, meta["loss_mode"])
        return {"wall_s": time.perf_counter() - start, "windows": dict(seen), "labels": labels, **info}
    return run


def _monai_labels(image, forward: Callable, window: int, mode: str) -> np.ndarray:
    """sliding_window_inference (Gaussian, overlap 0.5) + activation -> canonical uint8 labels (RAS)."""
    import torch
    from monai.inferers import sliding_window_inference

    from brats_seg.io.regions import activate, probabilities_to_labels

    with torch.inference_mode():
        logits = sliding_window_inference(image[None], (window,) * 3, 1, forward, overlap=0.5, mode="gaussian")
        labels = probabilities_to_labels(activate(torch.as_tensor(logits)[0], mode), mode)
    return labels.to(torch.uint8).numpy()


def _worker(side: str, model: str, case: str, threads: int, window: int, conn) -> None:
    """Build one side, then run it once per "run" message; "rss" answers the peak RSS in KiB."""
    try:
        import torch

        torch.set_num_threads(threads)
        build = _ours_runner if side == "ours" else _monai_runner
        run = _with_cpu(build(Path(model), Path(case), window))
        conn.send(("ready", None))
        while (message := conn.recv()) != "stop":
            if message == "rss":
                conn.send(("ok", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
            else:
                conn.send(("ok", run()))
    except Exception:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class _Side:
    """A side's worker process and its pipe."""

    def __init__(self, side: str, model: Path, case: Path, threads: int, window: int) -> None:
        ctx = mp.get_context("spawn")
        self.name = side
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(side, str(model), str(case), threads, window, child),
                                   daemon=True)
        self.process.start()
        child.close()
        self._answer()  # "ready": the model is loaded

    def ask(self, message: str):
        self.conn.send(message)
        return self._answer()

    def _answer(self):
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"bench infer: the {self.name} worker died (exit code {self.process.exitcode})")
        if status == "error":
            raise RuntimeError(f"bench infer: the {self.name} side failed:\n{value}")
        return value

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send("stop")
            except OSError:
                pass
        self.process.join(timeout=30)
        self.conn.close()


# ---- the benchmark -------------------------------------------------------------------------------

def _measure(model: Path, case: Path, threads: int, window: int, repeats: int) -> dict:
    """Warm-up run of each side, then `repeats` timed runs alternating; the sides' runs and peak RSS."""
    sides = {}
    try:
        for name in SIDES:  # one at a time, so loading one does not slow the other's warm-up
            sides[name] = _Side(name, model, case, threads, window)
            sides[name].ask("run")
        calls = alternate({name: lambda side=sides[name]: side.ask("run") for name in SIDES}, repeats)
        runs = {name: [c.value for c in calls[name]] for name in SIDES}  # timed inside the workers
        rss = {name: sides[name].ask("rss") for name in SIDES}
    finally:
        for side in sides.values():
            side.close()
    return {"runs": runs, "rss_kib": rss}


def _side_summary(runs: list[dict], rss_kib: int, gflop: dict[Shape, float], peak: float) -> dict:
    """Medians over the timed runs, windows run, network GFLOP/s and its share of the matmul peak."""
    windows = runs[-1]["windows"]
    flop = sum(count * gflop[tuple(shape)] for shape, count in windows.items())
    summary = {key: median([r[key] for r in runs]) for key in ("wall_s", "network_s", "cpu_user_s", "cpu_sys_s")}
    achieved = flop / summary["network_s"] if summary["network_s"] > 0 else 0.0
    return {**summary, "wall_s_runs": [r["wall_s"] for r in runs], "network_s_runs": [r["network_s"] for r in runs],
            "minor_faults": int(median([r["minor_faults"] for r in runs])), **_window_counts(windows),
            "network_gflop": flop, "network_gflops": achieved, "peak_share": achieved / peak,
            "peak_rss_gb": rss_kib * 1024 / 1e9}


def _window_counts(batches: dict[Shape, int]) -> dict:
    """Windows run (batches x batch size), per window size, and the forward calls (batches)."""
    per_size: Counter = Counter()
    for shape, count in batches.items():
        per_size["x".join(map(str, shape[2:]))] += count * shape[0]
    return {"windows": sum(per_size.values()), "window_shapes": dict(per_size), "forward_calls": sum(batches.values()),
            "batch_shapes": {"x".join(map(str, s)): n for s, n in batches.items()}}


def bench_infer(model: Path, case: Path, threads: int = 2, out: Path | None = Path("runs/bench/infer.json"),
                window: int = 128, repeats: int = 2) -> dict:
    """Run the side-by-side benchmark; print the table, write JSON + Markdown to `out`, return the report."""
    model, case = Path(model), Path(case)
    first = matmul_peak_gflops(threads)
    measured = _measure(model, case, threads, window, repeats)
    peak = max(first, matmul_peak_gflops(threads))  # before and after: the better is the practical peak
    runs = measured["runs"]
    shapes = {tuple(s) for name in SIDES for s in runs[name][-1]["windows"]}
    gflop = forward_gflop(model, sorted(shapes))
    report = {"model": str(model), "case": str(case), "threads": threads, "window": window, "overlap": 0.5,
              "repeats": repeats, "matmul_peak_gflops": peak,
              "forward_gflop": {"x".join(map(str, s)): v for s, v in gflop.items()}}
    for name in SIDES:
        report[name] = _side_summary(runs[name], measured["rss_kib"][name], gflop, peak)
    report["ours"]["timings"] = runs["ours"][-1]["timings"]
    ras_shape = runs["monai"][-1]["ras_shape"]
    report["monai"].update(ras_shape=ras_shape, windows_expected=monai_window_count(ras_shape, (window,) * 3, 0.5))
    report.update(_compare(runs, report))
    report["diagnosis"] = _diagnose(model, case, window, threads, runs)
    save_report(out, report, format_table(report))
    return report


def _diagnose(model: Path, case: Path, window: int, threads: int, runs: dict[str, list[dict]]) -> dict:
    return diagnose(model, case, window, threads, runs["ours"][-1]["labels"], runs["monai"][-1]["labels"])


def _compare(runs: dict[str, list[dict]], report: dict) -> dict:
    """Wall and CPU time ratios, agreement of the last runs' label maps, which targets are met."""
    ratio = report["ours"]["wall_s"] / report["monai"]["wall_s"]
    cpu = {name: report[name]["cpu_user_s"] + report[name]["cpu_sys_s"] for name in SIDES}
    agreement = region_agreement(runs["ours"][-1]["labels"], runs["monai"][-1]["labels"])
    met = {"ratio": ratio <= TARGETS["ratio_max"], "agreement": agreement["mean"] >= TARGETS["agreement_min"],
           "ours_rss": report["ours"]["peak_rss_gb"] <= TARGETS["ours_rss_gb_max"]}
    return {"ratio": ratio, "cpu_ratio": cpu["ours"] / cpu["monai"], "agreement": agreement,
            "targets": dict(TARGETS), "met": met}


def format_table(report: dict) -> str:
    """The Markdown table (ours, MONAI) and the lines with ratio, agreement and targets."""
    sides = (("brats-seg predict", report["ours"]), ("MONAI sliding_window_inference", report["monai"]))
    rows = [[label, f"{s['wall_s']:.2f}", f"{s['network_s']:.2f}", f"{s['cpu_user_s'] + s['cpu_sys_s']:.1f}",
             f"{s['peak_rss_gb']:.2f}", s["windows"], f"{s['network_gflops']:.1f}", f"{100 * s['peak_share']:.1f}"]
            for label, s in sides]
    table = markdown_table(["side", "wall s", "network s", "CPU s", "peak RSS GB", "windows", "network GFLOP/s",
                            "% of matmul peak"], rows)
    agree, met, w = report["agreement"], report["met"], report["window"]
    yes = {True: "met", False: "NOT met"}
    lines = [
        f"ours / MONAI wall time = {report['ratio']:.3f} (target <= {TARGETS['ratio_max']}: {yes[met['ratio']]}); "
        f"CPU time (user + sys, robust to other load) {report['cpu_ratio']:.3f}",
        f"agreement (Dice ours vs MONAI): WT {agree['WT']:.4f}, TC {agree['TC']:.4f}, ET {agree['ET']:.4f}, "
        f"mean {agree['mean']:.4f} (target >= {TARGETS['agreement_min']}: {yes[met['agreement']]})",
        f"ours peak RSS {report['ours']['peak_rss_gb']:.2f} GB (target <= {TARGETS['ours_rss_gb_max']}: "
        f"{yes[met['ours_rss']]})",
        f"fp32 matmul peak {report['matmul_peak_gflops']:.1f} GFLOP/s; {w}³ windows, overlap 0.5, Gaussian, "
        f"no TTA; {report['threads']} threads; medians of {report['repeats']} alternating runs after a warm-up",
    ]
    return table + "\n\n" + "\n".join(f"- {line}" for line in lines + _diagnosis_lines(report.get("diagnosis")))


def _diagnosis_lines(diagnosis: dict | None) -> list[str]:
    """Agreement over the same crop, and Dice against the truth per prediction (when known)."""
    if not diagnosis:
        return []
    def fmt(scores: dict) -> str:
        return ", ".join(f"{k} {scores[k]:.4f}" for k in ("WT", "TC", "ET", "mean"))
    lines = [f"agreement with MONAI's sliding_window_inference over our crop (same windows domain): "
             f"{fmt(diagnosis['agreement_same_crop'])}",
             f"MONAI over our crop vs MONAI over the whole volume: {fmt(diagnosis['monai_crop_vs_monai_whole'])}"]
    for name, scores in diagnosis.get("dice_vs_truth", {}).items():
        lines.append(f"Dice against the case's label file, {name}: {fmt(scores)}")
    return lines
