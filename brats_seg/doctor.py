"""What `brats-seg doctor` reports: the environment, and checks that an install or a run works."""
from __future__ import annotations

import os
import platform
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def environment() -> list[tuple[str, str]]:
    import torch

    from brats_seg.engine.run_info import versions

    lines = [(k, v) for k, v in versions().items()]
    lines += [("cpu cores", str(os.cpu_count())), ("torch threads", str(torch.get_num_threads()))]
    lines += [(v, os.environ[v]) for v in THREAD_VARS if v in os.environ]
    lines.append(("cuda available", str(torch.cuda.is_available())))
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        lines.append((f"cuda:{i}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB"))
    lines.append(("machine", platform.machine()))
    return lines


def check_install(lines: list) -> list[str]:
    """Import every stage and every model module (where the registry's factories live); report what fails."""
    import importlib
    import pkgutil

    import brats_seg.models
    from brats_seg.models.registry import available_models

    problems = []
    model_modules = [f"brats_seg.models.{m.name}" for m in pkgutil.iter_modules(brats_seg.models.__path__)]
    for module in ("brats_seg.ingest.stage", "brats_seg.preprocess.stage", "brats_seg.engine.loop", "brats_seg.infer.segmenter",
                   "brats_seg.evaluate.stage", "SimpleITK", "nibabel", "monai", *model_modules):
        try:
            importlib.import_module(module)
        except Exception as exc:  # report, never crash: this is the diagnostic tool
            problems.append(f"import {module}: {type(exc).__name__}: {exc}")
    lines.append(("models", ", ".join(available_models())))
    return problems


def check_run(path: Path, lines: list) -> list[str]:
    """A run folder: run.json readable, checkpoints load with weights_only=True and match their hashes."""
    import json

    import torch

    path = Path(path)
    problems = []
    files = [path] if path.is_file() else sorted((path / "checkpoints").glob("*.pt"))
    if path.is_dir():
        try:
            info = json.loads((path / "run.json").read_text())
            if not isinstance(info, dict):
                raise ValueError(f"a JSON {type(info).__name__}, not an object")
            lines += [("run status", str(info.get("status"))), ("run task", str(info.get("task"))),
                      ("best metrics", json.dumps(info.get("best", {}))[:200])]
        except (OSError, ValueError) as exc:
            problems.append(f"{path / 'run.json'}: unreadable ({exc})")
    if not files:
        problems.append(f"{path}: no checkpoints found")
    for ckpt in files:
        try:
            torch.load(ckpt, map_location="cpu", weights_only=True)
            lines.append((f"checkpoint {ckpt.name}", f"ok, {ckpt.stat().st_size / 2**20:.1f} MiB"))
        except Exception as exc:
            problems.append(f"{ckpt}: does not load with weights_only=True ({type(exc).__name__}: {str(exc)[:120]})")
    return problems
