"""`brats-seg bench gpu`: the GPU check, one command to run whenever a CUDA machine is at hand.

1. Training steps/s of the recipe's model (default pipelines/train/train_gpu_brats.yaml: 128^3
   patches, batch 2) in fp32 and in the AMP dtype training picks (bf16 where native, else fp16
   with a GradScaler), on one fixed phantom batch: the engine's own train_step/optimizer_step,
   so the loss must stay finite and fall.
2. A 2-rank torchrun NCCL run of `brats-seg train` on two phantoms when two GPUs are present.
3. Sliding-window predict of one case (a shared real BraTS case, else a phantom) on CUDA and on
   the CPU with the same weights: Dice per region between the two label maps, the largest
   probability difference, and the per-case time on each.

Without CUDA it prints one line, "no CUDA device: nothing measured", writes {"measured": false}
to --out and exits 0: a check with nothing to check is not a failure (CI has no GPU).
`--device cpu` runs the same code on the CPU as a smoke test (give tiny sizes as overrides; the
CPU "AMP" contender is bf16 autocast there, and "agreement" compares the CPU with itself).
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from brats_seg.bench.common import markdown_table, save_report
from brats_seg.engine.distributed import DistInfo
from brats_seg.engine.model_meta import BRATS_CHANNELS, ModelMeta
from brats_seg.engine.runtime import (AMP_NAMES, amp_dtype, autocast_factory, configure_runtime, make_scaler,
                                      memory_format, seed_all)
from brats_seg.engine.schedule import LRSchedule, build_optimizer
from brats_seg.engine.state import TrainState
from brats_seg.engine.step import optimizer_step, train_step
from brats_seg.errors import InputError
from brats_seg.seg3d.config import Config3D, load_config
from brats_seg.seg3d.data import Dataset3D

WARMUP_STEPS = 3  # allocator, cuDNN autotuning, GradScaler's first scale drops: untimed
DDP_STEPS = 10
NO_CUDA = "no CUDA device: nothing measured"


def bench_gpu(config: Path, overrides: Sequence[str], out: Path | None, device: str = "cuda", steps: int = 20,
              case: Path | None = None, ddp: str = "auto", threads: int | None = None) -> dict[str, Any]:
    """Run the three checks above; print a table, write the JSON report to `out` (+ .md)."""
    if case is not None and not Path(case).is_dir():
        raise InputError(case, "is not a folder; --case expects a BraTS case folder")
    if device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA, flush=True)
        report = {"measured": False, "reason": NO_CUDA}
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(json.dumps(report, indent=2) + "\n")
        return report
    dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    cfg = load_config(config, [*overrides, "data.fold=-1"])
    if threads:
        torch.set_num_threads(threads)
    report: dict[str, Any] = {"measured": True, "device": describe(dev), "config": str(config),
                              "overrides": list(overrides), "model": cfg.model.name,
                              "features": list(cfg.model.features), "patch_size": list(cfg.data.patch_size),
                              "batch_size": cfg.data.batch_size, "steps": steps}
    with tempfile.TemporaryDirectory(prefix="brats-bench-gpu-") as tmp:
        report["train"], weights, meta = train_all(cfg, dev, steps)
        report["ddp"] = ddp_smoke(config, overrides, dev, Path(tmp), ddp)
        report["predict"] = predict_agreement(weights, meta, case, dev, Path(tmp), threads)
    save_report(out, report, format_table(report))
    return report


def describe(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        info.update(name=torch.cuda.get_device_name(device), capability=f"{major}.{minor}",
                    count=torch.cuda.device_count(), cuda=torch.version.cuda)
    return info


def precisions(device: torch.device) -> dict[str, torch.dtype | None]:
    """fp32 and the AMP dtype training would pick here (CPU smoke: bf16 autocast)."""
    amp = amp_dtype("auto", device) if device.type == "cuda" else torch.bfloat16
    return {"fp32": None, AMP_NAMES[amp]: amp}


def train_all(cfg: Config3D, device: torch.device, steps: int) -> tuple[dict, dict, ModelMeta]:
    """Each precision from the same initial weights; returns the results, the fp32-trained weights
    (for the predict check) and the model's meta."""
    results, weights, meta = {}, {}, None
    flags = torch.backends.cudnn.benchmark
    for name, dtype in precisions(device).items():
        try:
            results[name], state = train_precision(cfg, device, dtype, steps)
        except torch.cuda.OutOfMemoryError as exc:
            results[name] = {"error": f"out of memory: {str(exc).splitlines()[0][:200]}"}
            state = None
        if state is not None and name == "fp32":
            weights = {k: v.detach().cpu() for k, v in state.model.state_dict().items()}
        meta = state.meta if state is not None else meta
        del state
        if device.type == "cuda":
            torch.cuda.empty_cache()
    torch.backends.cudnn.benchmark = flags  # predict runs with its own settings, as `brats-seg predict` does
    if meta is None:
        raise InputError("bench gpu", "the model did not fit in GPU memory in any precision; give smaller "
                                      "data.patch_size or data.batch_size overrides")
    return results, weights, meta


def train_precision(cfg: Config3D, device: torch.device, dtype: torch.dtype | None,
                    steps: int) -> tuple[dict, TrainState]:
    """Warm-up, then `steps` timed optimiser steps on one fixed phantom batch."""
    state = bench_state(cfg, device, dtype, steps + WARMUP_STEPS)
    batch = phantom_batch(cfg.data.batch_size, cfg.data.patch_size, cfg.seed)
    losses, finite = [], []

    def step() -> None:
        losses.append(train_step(state, [batch] * cfg.optim.grad_accum))
        finite.append(optimizer_step(state, cfg.optim.grad_clip))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(WARMUP_STEPS):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - start
    result = {"steps_per_s": steps / seconds, "samples_per_s": steps * cfg.data.batch_size * cfg.optim.grad_accum
              / seconds, "first_loss": losses[0], "last_loss": losses[-1],
              "finite": all(math.isfinite(x) for x in losses), "skipped_steps": finite.count(False),
              "learning": losses[-1] < losses[0], "grad_scaler": bool(state.scaler.is_enabled())}
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result, state


def bench_state(cfg: Config3D, device: torch.device, dtype: torch.dtype | None, total: int) -> TrainState:
    """The engine's TrainState for the recipe's model, seeded, without data files or a run folder."""
    from brats_seg.seg3d.trainer import build_3d

    configure_runtime(0, False, device)  # cuDNN autotuning and TF32 on CUDA, as training sets them
    seed_all(cfg.seed)
    built = build_3d(cfg, stub_dataset(), device)
    layout = memory_format(cfg.train.memory_format, device)
    model = built.model.to(device, memory_format=layout)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    return TrainState(model=model, train_model=model, optimizer=optimizer,
                      schedule=LRSchedule(optimizer, cfg.schedule, total), scaler=make_scaler(device, dtype),
                      loss_fn=built.loss_fn, autocast=autocast_factory(device, dtype), info=DistInfo(device=device),
                      run_dir=Path("."), config_hash="bench", data_sha256="bench", meta=built.meta,
                      memory_format=layout)


def stub_dataset() -> Dataset3D:
    """What the model's meta reads of a dataset: four BraTS channels at native 1 mm."""
    return Dataset3D(Path("."), Path("."), "", "", {}, [], [], list(BRATS_CHANNELS), [1.0, 1.0, 1.0],
                     {"spacing": "native"})


def phantom_batch(batch: int, patch: Sequence[int], seed: int) -> dict[str, torch.Tensor]:
    """Noisy patches with one spherical tumour each (ED shell, ET ring, NCR centre); channel 0 is
    bright over the tumour, 1 over the core, 2 over ET, so the loss can fall in a few steps."""
    gen = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in patch], indexing="ij"))
    radius = min(patch) / 4
    labels = torch.zeros((batch, *patch), dtype=torch.uint8)
    for b in range(batch):
        centre = torch.tensor([radius + torch.rand(1, generator=gen).item() * (s - 2 * radius) for s in patch])
        dist = ((grid - centre.view(3, 1, 1, 1)) ** 2).sum(0).sqrt()
        for scale, value in ((1.0, 2), (0.65, 3), (0.35, 1)):
            labels[b][dist < scale * radius] = value
    image = 0.3 * torch.randn((batch, 4, *patch), generator=gen)
    for channel, values in enumerate(((1, 2, 3), (1, 3), (3,))):
        image[:, channel] += 2.0 * torch.isin(labels, torch.tensor(values, dtype=torch.uint8)).float()
    return {"image": image, "label": labels}


def ddp_smoke(config: Path, overrides: Sequence[str], device: torch.device, tmp: Path, mode: str) -> dict[str, Any]:
    """`brats-seg train` under torchrun, 2 ranks (NCCL on CUDA, gloo for the CPU smoke), DDP_STEPS steps."""
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if mode == "never" or (mode == "auto" and gpus < 2):
        return {"ran": False, "reason": f"{gpus} CUDA device(s); the NCCL run needs 2" if mode == "auto" else "--ddp never"}
    run = tmp / "ddp_run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "brats_seg",
           "train", "--config", str(config), "--data", str(phantom_dataset(tmp)), "--out", str(run), *overrides,
           "data.fold=-1", "data.num_workers=0", "augment.enabled=false", f"train.max_steps={DDP_STEPS}",
           "train.progress=false", "train.log_every_steps=1", f"train.device={device.type}",
           f"distributed.backend={'nccl' if device.type == 'cuda' else 'gloo'}", "distributed.timeout_s=120"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return {"ran": True, "ok": False, "error": "timed out after 600 s"}
    result: dict[str, Any] = {"ran": True, "backend": "nccl" if device.type == "cuda" else "gloo",
                              "returncode": proc.returncode, "seconds": time.perf_counter() - start}
    try:
        info = json.loads((run / "run.json").read_text())
        losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line).get("kind") == "step"]
    except (OSError, ValueError, KeyError):
        info, losses = {}, []
    result.update(status=info.get("status"), world_size=info.get("world_size"), steps=len(losses),
                  finite=bool(losses) and all(math.isfinite(x) for x in losses))
    result["ok"] = proc.returncode == 0 and result["status"] == "finished" and result["world_size"] == 2
    if not result["ok"]:
        result["stderr_tail"] = proc.stderr[-2000:]
    return result


def phantom_dataset(tmp: Path) -> Path:
    """Two synthetic cases, ingested and preprocessed (native spacing): preprocessed.json."""
    from brats_seg.ingest.stage import ingest
    from brats_seg.preprocess.case import PreprocessConfig
    from brats_seg.preprocess.stage import run_preprocess
    from brats_seg.synth.phantoms import synthesize_dataset

    synthesize_dataset(tmp / "phantoms", cases=2, seed=0, shape=(64, 64, 48))
    ingest([tmp / "phantoms"], tmp / "raw.json")
    run_preprocess(tmp / "raw.json", tmp / "pp", PreprocessConfig(), data_roots=(tmp / "phantoms",))
    return tmp / "pp" / "preprocessed.json"


def predict_agreement(weights: dict, meta: ModelMeta, case: Path | None, device: torch.device, tmp: Path,
                      threads: int | None) -> dict[str, Any]:
    """The same fp32 weights through `Segmenter` on `device` and on the CPU: label-map agreement and time."""
    from brats_seg.engine.checkpoint import save_best
    from brats_seg.evaluate.dice import dice_per_region
    from brats_seg.infer.segmenter import Segmenter
    from brats_seg.io.labels import REGION_NAMES, region_masks

    if not weights:
        return {"error": "no fp32 weights (fp32 training ran out of memory)"}
    if case is None:
        from brats_seg.synth.phantoms import synthesize_case

        case = synthesize_case("Phantom_0000", tmp / "predict_case", seed=1)
    path = save_best(tmp / "model", weights, replace(meta, amp_dtype=None).to_dict(), {})
    on_device = Segmenter.from_run(path, device=str(device))
    first = on_device.predict(case)  # warm-up: CUDA context, cuDNN kernels
    dev = on_device.predict(case, probabilities=True)
    cpu = Segmenter.from_run(path, device="cpu", threads=threads).predict(case, probabilities=True)
    masks = region_masks(cpu.labels)
    return {"case": str(case), "shape": list(cpu.labels.shape), "dice": dice_per_region(dev.labels, cpu.labels),
            "cpu_region_voxels": {name: int(masks[name].sum()) for name in REGION_NAMES},
            "max_abs_probability_difference": float(np.abs(dev.probabilities - cpu.probabilities).max()),
            f"{device.type}_first_s": first.timings["total_s"], f"{device.type}_s": dev.timings["total_s"],
            "cpu_s": cpu.timings["total_s"], f"{device.type}_network_s": dev.timings.get("network_s"),
            "cpu_network_s": cpu.timings.get("network_s")}


def format_table(report: dict[str, Any]) -> str:
    """Training steps/s per precision, then the DDP and predict lines."""
    rows = []
    for name, r in report["train"].items():
        if "error" in r:
            rows.append([name, r["error"], "", "", "", ""])
            continue
        rows.append([name, f"{r['steps_per_s']:.3f}", f"{r['samples_per_s']:.2f}",
                     f"{r['first_loss']:.4f} -> {r['last_loss']:.4f}", "yes" if r["grad_scaler"] else "no",
                     f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "-"])
    d = report["device"]
    title = f"{d.get('name', d['type'])} (capability {d.get('capability', '-')}), torch {d['torch']}, " \
            f"patch {report['patch_size']}, batch {report['batch_size']}, {report['steps']} timed steps"
    lines = [title, "", markdown_table(["precision", "steps/s", "samples/s", "loss first -> last", "GradScaler",
                                        "peak GiB"], rows, "lrrlrr"), ""]
    ddp = report["ddp"]
    lines.append(f"DDP: {ddp['reason']}" if not ddp["ran"] else
                 f"DDP ({ddp.get('backend')}, 2 ranks, train.max_steps={DDP_STEPS}): {'ok' if ddp['ok'] else 'FAILED'}"
                 f" in {ddp.get('seconds', 0):.1f} s, status {ddp.get('status')}, {ddp.get('steps')} steps logged")
    p = report["predict"]
    if "error" in p:
        lines.append(f"predict: {p['error']}")
    else:
        kind = report["device"]["type"]
        dice = ", ".join(f"{k} {v:.4f}" for k, v in p["dice"].items())
        lines.append(f"predict {Path(p['case']).name} {p['shape']}: {kind} {p[f'{kind}_s']:.2f} s (first "
                     f"{p[f'{kind}_first_s']:.2f} s), cpu {p['cpu_s']:.2f} s; Dice {kind} vs cpu: {dice}; "
                     f"max |dp| {p['max_abs_probability_difference']:.2e}")
    return "\n".join(lines)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
