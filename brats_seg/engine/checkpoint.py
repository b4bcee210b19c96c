"""Checkpoints: atomic, exact (every RNG state), loadable with weights_only=True, two deep.

RUN_DIR/checkpoints/latest.pt is written to a temp file and fsynced before any rename; then the old
latest becomes previous.pt and the temp file latest.pt, so a crash at any moment leaves at least
one complete checkpoint. Loading tries latest, then previous (warning that names the unreadable file). RNG
states are stored as tensors, lists and numbers only, so torch.load(weights_only=True) reads them
and no unsafe unpickling fallback exists. best.pt holds the best weights plus the metadata that
inference needs to rebuild the model.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from brats_seg.core.atomic import atomic_path
from brats_seg.core.inputfile import require_regular_file
from brats_seg.engine.model_meta import ModelMeta
from brats_seg.engine.runtime import pause_point
from brats_seg.errors import InputError

FORMAT = "brats-seg-checkpoint"
VERSION = 1
CKPT_DIR = "checkpoints"
LATEST, PREVIOUS, BEST = "latest.pt", "previous.pt", "best.pt"


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# ---- RNG state as weights_only-safe values ------------------------------------------------------

def capture_rng() -> dict[str, Any]:
    """Python, NumPy (global) and torch (CPU and every CUDA device) RNG states."""
    version, pystate, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": {"version": version, "state": torch.tensor(pystate, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- save / load ---------------------------------------------------------------------------------

def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CKPT_DIR


RUN_FILES = ("config.yaml", "run.json", "metrics.jsonl", "metrics.csv")


def run_inputs(model: Path, whole_run: bool = False) -> list[Path]:
    """Everything a --model argument stands for, none of which an output may replace: the path given,
    every checkpoint of its run (a resume falls back to previous.pt) and the run's own files. A
    checkpoint file given inside RUN/checkpoints stands for its run too. whole_run: every file in
    RUN and RUN/checkpoints, for commands (predict) that never write into a run; quantize leaves it
    off because its int8.pt may be rewritten inside the run folder."""
    model = Path(model)
    folder = model if model.is_dir() else model.parent
    run = folder.parent if folder.name == CKPT_DIR else folder
    inputs = [model, *(f for f in checkpoint_dir(run).glob("*.pt"))]
    if model.is_dir() or folder.name == CKPT_DIR:
        inputs += [run / name for name in RUN_FILES if (run / name).exists()]
        if whole_run:
            inputs += [f for d in (run, checkpoint_dir(run)) if d.is_dir() for f in d.iterdir()]
    return inputs


def save_checkpoint(run_dir: Path, payload: dict[str, Any], step: int = -1, rank: int = 0) -> Path:
    """Write latest.pt, keeping the former latest as previous.pt; a kill at any moment leaves at
    least one complete checkpoint under a final name. Order: the new file is written to a hidden
    temp file and fsynced (and the folder) before anything is renamed; then latest -> previous,
    temp -> latest, folder fsynced. A kill between the two renames leaves previous.pt (load_latest
    falls back to it). `step` / `rank` only locate the test-only pause (runtime.pause_point)."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    latest, previous = folder / LATEST, folder / PREVIOUS
    for stale in folder.glob(f".{LATEST}.*.tmp*"):  # left by a process killed mid-save
        stale.unlink(missing_ok=True)
    tmp = folder / f".{LATEST}.{uuid.uuid4().hex[:8]}.tmp.pt"
    try:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
        _fsync(tmp)
        _fsync(folder)
        pause_point("checkpoint", step, rank)
        if latest.exists():
            os.replace(latest, previous)
        os.replace(tmp, latest)
        _fsync(folder)
    finally:
        tmp.unlink(missing_ok=True)
    return latest


def _fsync(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes its renames durable; some filesystems refuse it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError) if path.is_dir() else contextlib.nullcontext():
            os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> dict[str, Any]:
    import warnings

    with warnings.catch_warnings():  # torch warns about legacy formats; our error says it all
        warnings.simplefilter("ignore")
        payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError("not a brats-seg checkpoint")
    if payload.get("version") != VERSION:
        raise ValueError(f"checkpoint version {payload.get('version')!r}, expected {VERSION}")
    return payload


def load_latest(run_dir: Path) -> tuple[dict[str, Any], Path]:
    """The newest readable checkpoint of a run and its path; InputError if there is none."""
    folder = checkpoint_dir(run_dir)
    candidates = [folder / LATEST, folder / PREVIOUS]
    failures = []
    for path in candidates:
        if not path.exists():
            continue
        try:
            payload = _read(path)
        except Exception as exc:  # any unreadable file: truncated zip, bad pickle, wrong format
            failures.append(path)
            warn(f"{path}: cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); "
                 "falling back to the previous checkpoint")
            continue
        if failures:
            warn(f"resuming from {path} instead of the unreadable {failures[0]}")
        return payload, path
    if failures:
        raise InputError(folder, "no readable checkpoint (latest.pt and previous.pt are both damaged)")
    raise InputError(folder, "no checkpoint to resume from; run without --resume to start a new run")


def check_compatible(payload: dict[str, Any], path: Path, config_hash: str, data_sha256: str,
                     legacy_hashes: Sequence[str] = ()) -> None:
    """Refuse to resume with a different config or different data (data_sha256: the task's data
    identity; the 3D task uses a fingerprint of case ids, file hashes and preprocessing).
    legacy_hashes: what older versions hashed the same config to (still accepted)."""
    if payload.get("config_hash") not in (config_hash, *legacy_hashes):
        raise InputError(path, "was written with a different config (config hash "
                               f"{str(payload.get('config_hash'))[:12]} != {config_hash[:12]}); resume with "
                               "the run's config (RUN_DIR/config.yaml) or start a new run directory")
    if payload.get("data_sha256") != data_sha256:
        raise InputError(path, "was written for different data (case list, case files or preprocessing "
                               "differ); resume with the same preprocessed dataset or start a new run directory")


def save_best(run_dir: Path, model_state: dict[str, torch.Tensor], meta: dict[str, Any],
              metrics: dict[str, Any]) -> Path:
    """best.pt: weights + model metadata (ModelMeta.to_dict()) + the metrics that made it best."""
    path = checkpoint_dir(run_dir) / BEST
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, "model": model_state, "meta": meta,
                    "metrics": metrics}, tmp)
    return path


def model_checkpoint(path: Path) -> Path:
    """The file a run dir stands for (checkpoints/best.pt, else latest.pt), or the file given."""
    path = Path(path)
    if path.is_dir():
        folder = checkpoint_dir(path)
        path = folder / BEST if (folder / BEST).exists() else folder / LATEST
    require_regular_file(path, "model checkpoint not found; expected RUN_DIR or RUN_DIR/checkpoints/best.pt",
                         "RUN_DIR or RUN_DIR/checkpoints/best.pt")
    return path


def load_model(path: Path, device: str | torch.device = "cpu",
               task: str | None = None) -> tuple[torch.nn.Module, ModelMeta]:
    """(model in eval mode, its checked ModelMeta) from best.pt/latest.pt or a run dir (its best.pt,
    else latest.pt); task='3d'/'2d' refuses the other task's models with one InputError."""
    model, meta, _ = _load(path, device, task)
    return model, meta


def load_inference_model(path: Path, device: str | torch.device = "cpu",
                         task: str | None = None) -> tuple[torch.nn.Module, dict]:
    """load_model with the metadata as stored (a plain dict, checked as a ModelMeta)."""
    model, _, stored = _load(path, device, task)
    return model, stored


def _load(path: Path, device: str | torch.device, task: str | None) -> tuple[torch.nn.Module, ModelMeta, dict]:
    from brats_seg.models.registry import create_model

    path = model_checkpoint(path)
    payload = _read_or_input_error(path)
    meta = ModelMeta.from_dict(payload.get("meta"), path, task)
    try:
        model = create_model(meta.model, **meta.model_kwargs)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(path, f"is not a usable model checkpoint ({_first_line(exc)})")
    load_weights(model, payload.get("model"), path)
    return model.to(device).eval(), meta, payload["meta"]


def load_weights(model: torch.nn.Module, weights: Any, path: Path) -> None:
    """Put a checkpoint's weights into `model`; InputError (one line naming `path`) when they are
    not a state dict of that model or any of them is not finite (a NaN model writes empty masks)."""
    if not isinstance(weights, dict):
        raise InputError(path, "holds no model weights ('model' mapping); not a model checkpoint")
    bad = [k for k, v in weights.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise InputError(path, f"holds non-finite weights (NaN or inf in {len(bad)} tensor(s), first {bad[0]!r}); "
                               "the training diverged: use an earlier checkpoint or retrain")
    try:
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(path, f"holds weights that do not fit the model its metadata describes ({_first_line(exc)})")


def _first_line(exc: BaseException) -> str:
    """'Type: first meaningful line' of an exception (torch's load_state_dict errors are multi-line)."""
    lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()]
    detail = lines[1] if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {detail[:200]}" if detail else type(exc).__name__


def load_initial_weights(model: torch.nn.Module, path: Path, meta: ModelMeta) -> Path:
    """Start a run from another run's weights (fine-tuning): the checkpoint must hold the same
    architecture (model name and arguments); only the weights are taken, not the optimiser or
    the progress, so the new run has its own schedule. Returns the file used."""
    path = model_checkpoint(path)
    payload = _read_or_input_error(path)
    theirs, weights = payload.get("meta") or {}, payload.get("model")
    ModelMeta.from_dict(theirs, path, meta.task)

    def architecture(m: dict) -> tuple:  # dropout changes no weight
        kwargs = {k: v for k, v in (m.get("model_kwargs") or {}).items() if k != "dropout"}
        return m.get("model"), kwargs

    ours = architecture(meta.to_dict())
    if architecture(theirs) != ours:
        raise InputError(path, f"holds a different model ({architecture(theirs)}, this run "
                               f"{ours}); model.init_from needs the same architecture")
    load_weights(model, weights, path)
    return path


def _read_or_input_error(path: Path) -> dict[str, Any]:
    try:
        return _read(path)
    except Exception as exc:
        raise InputError(path, f"cannot be read as a brats-seg checkpoint ({type(exc).__name__})")
