"""The folds of `bench learn`: which cases each holds out, the held-out raw manifests, and the
`brats-seg train` / `brats-seg predict` subprocesses, each skipped when its output is current.

Folds come from seg3d.split.kfold_split with the config's split seed (data.split_seed, by default
the run's seed), the same function `brats-seg train data.folds=K data.fold=I` splits with, so fold
I's run trains on exactly the cases not held out.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import brats_seg
from brats_seg.core.atomic import atomic_write_json
from brats_seg.core.hashing import sha256_file
from brats_seg.engine.run_info import load_run_info
from brats_seg.errors import InputError
from brats_seg.io.manifest import load_manifest, manifest_root, save_manifest
from brats_seg.seg3d.split import kfold_split

CHECKPOINT = Path("checkpoints") / "latest.pt"  # the weights training ended with (best.pt is chosen on the held-out fold)


class StepFailed(Exception):
    """A train or predict subprocess failed for a reason other than bad input (its log says why)."""


@dataclass(frozen=True)
class Fold:
    index: int
    held_out: tuple[str, ...]
    folder: Path

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    @property
    def heldout_raw(self) -> Path:
        return self.folder / "heldout_raw.json"


def plan_folds(case_ids: Sequence[str], folds: int, seed: int, out: Path) -> list[Fold]:
    """K folds whose held-out cases partition `case_ids` (each case held out exactly once)."""
    if not 2 <= folds <= len(case_ids):
        raise InputError("--folds", f"got {folds}; expected 2 to {len(case_ids)} (the number of labelled cases)")
    plan = [Fold(i, tuple(kfold_split(case_ids, folds, i, seed)["val"]), Path(out) / f"fold_{i}")
            for i in range(folds)]
    held = sorted(c for f in plan for c in f.held_out)
    if held != sorted(case_ids):
        raise RuntimeError(f"internal error: folds do not partition the cases ({held} vs {sorted(case_ids)})")
    return plan


def write_heldout_manifest(raw_path: Path, ids: Sequence[str], dest: Path,
                           data_roots: Sequence[Path]) -> tuple[Path, ...]:
    """The raw manifest of the held-out cases only, at `dest`; returns the dataset roots it names
    (absolute), which predict and evaluate must be allowed to read (--data-root)."""
    raw = load_manifest(raw_path, stage="raw")
    count = len(raw.get("roots") or ["."])
    roots = tuple(manifest_root(raw_path, raw, i, data_roots) for i in range(count))
    wanted = set(ids)
    sub = dict(raw, cases=[c for c in raw["cases"] if c["id"] in wanted], rejected=[],
               roots=[os.path.relpath(r, dest.parent.resolve()) for r in roots])
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_manifest(dest, sub)
    return roots


def child_env() -> dict[str, str]:
    """The environment of the subprocesses: this process's, with this copy of brats_seg first on the path."""
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)  # a fold is one process, even when bench learn runs under a launcher
    package_parent = str(Path(brats_seg.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([package_parent, *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_logged(argv: list[str], log: Path, what: str) -> float:
    """Run `python -m brats_seg ARGV` with its output appended to `log`; its wall seconds.
    Exit 2 (bad input) becomes the child's own error line; other failures StepFailed."""
    cmd = [sys.executable, "-m", "brats_seg", *argv]
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        rc = wait_through_ctrl_c(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env()))
    seconds = time.monotonic() - start
    if rc == 0:
        return seconds
    errors = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.startswith("error:")]
    detail = errors[-1].removeprefix("error:").strip() if errors else f"exit code {rc}"
    if rc == 2:
        raise InputError(what, f"{detail} (log: {log})")
    raise StepFailed(f"{what} failed with exit code {rc}: {detail}; see {log}, then rerun bench learn (finished "
                     "folds are kept)")


CHILD_STOP_S = 300.0  # how long a Ctrl-C'd child may take to checkpoint and exit before it is killed


def wait_through_ctrl_c(proc: subprocess.Popen) -> int:
    """The child's exit code. A Ctrl-C reaches the child too (same process group): the child then
    checkpoints and exits (train: 130), so wait for that rather than kill it mid-save as
    subprocess.run does; a second Ctrl-C, or CHILD_STOP_S, kills it. Re-raises the interrupt."""
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            proc.wait(timeout=CHILD_STOP_S)
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        raise


def train_state(fold: Fold, config_sha: str, budget_s: float) -> str:
    """'done', 'resume' or 'fresh' for the fold's run; a run made with another config, budget or
    split is refused (its results would not be this study's)."""
    info = load_run_info(fold.run_dir)
    has_checkpoint = (fold.run_dir / CHECKPOINT).is_file()
    if info is None:
        return "resume" if has_checkpoint else "fresh"
    budget = info.get("config", {}).get("train", {}).get("time_budget_s")
    split = list(info.get("split", {}).get("val", []))
    if info.get("config_sha256") != config_sha or budget != budget_s or split != list(fold.held_out):
        raise InputError(fold.run_dir, f"holds a run of another config, budget or split (config hash "
                                       f"{str(info.get('config_sha256'))[:12]}, budget {budget} s, held out {split}); "
                                       "expected this study's: choose a new --out")
    status = str(info.get("status", ""))
    if status.startswith("finished"):
        return "done" if has_checkpoint else "fresh"
    if status.startswith("stopped"):
        raise InputError(fold.run_dir, f"training {status}; change the recipe (e.g. a lower optim.lr) and use a new --out")
    return "resume" if has_checkpoint else "fresh"


def train_fold(fold: Fold, config: Path, preprocessed: Path, overrides: Sequence[str], config_sha: str,
               budget_s: float) -> dict:
    """Train the fold (or resume it, or keep it when finished); its steps, status and seconds."""
    state = train_state(fold, config_sha, budget_s)
    record_path = fold.folder / "train.json"
    wall = None
    if state != "done":
        print(f"bench learn: fold {fold.index}: training ({state}), held out {', '.join(fold.held_out)} "
              f"-> {fold.run_dir}", file=sys.stderr, flush=True)
        argv = ["train", "--config", str(config), "--data", str(preprocessed), "--out", str(fold.run_dir),
                *(["--resume"] if state == "resume" else []), *overrides]
        seconds = run_logged(argv, fold.folder / "train.log", f"fold {fold.index}: brats-seg train")
        previous = _read_json(record_path).get("wall_s", 0.0) if state == "resume" else 0.0
        wall = previous + seconds
        atomic_write_json(record_path, {"wall_s": round(wall, 2)})
    info = load_run_info(fold.run_dir) or {}
    if not str(info.get("status", "")).startswith("finished"):
        raise StepFailed(f"fold {fold.index}: training ended with status {info.get('status')!r} (see "
                         f"{fold.folder / 'train.log'}); rerun bench learn to continue it")
    progress = info.get("progress", {})
    return {"status": info["status"], "steps": progress.get("step"), "elapsed_s": progress.get("elapsed_s"),
            "wall_s": round(wall, 2) if wall is not None else _read_json(record_path).get("wall_s"),
            "reused": state == "done", "config_sha256": info.get("config_sha256"), "run": str(fold.run_dir)}


def predict_fold(fold: Fold, variant: str, predict_args: Sequence[str], roots: Sequence[Path]) -> dict:
    """Predict the fold's held-out cases with `brats-seg predict` (kept when current); its record.
    roots: the folders predict may read the held-out manifest's files in (its --data-root)."""
    pred_dir, marker = fold.folder / f"pred_{variant}", fold.folder / f"predict_{variant}.json"
    checkpoint = fold.run_dir / CHECKPOINT
    key = {"args": list(predict_args), "checkpoint_sha256": sha256_file(checkpoint), "held_out": list(fold.held_out)}
    done = _read_json(marker)
    if done.get("key") == key and (pred_dir / "predictions.json").is_file():
        return {"dir": str(pred_dir), "wall_s": done.get("wall_s"), "reused": True}
    print(f"bench learn: fold {fold.index}: predicting {len(fold.held_out)} held-out case(s) ({variant})",
          file=sys.stderr, flush=True)
    argv = ["predict", "--model", str(checkpoint), "--manifest", str(fold.heldout_raw), "--out", str(pred_dir),
            *predict_args, *[a for r in roots for a in ("--data-root", str(Path(r).resolve()))]]
    seconds = run_logged(argv, fold.folder / f"predict_{variant}.log", f"fold {fold.index}: brats-seg predict")
    atomic_write_json(marker, {"key": key, "wall_s": round(seconds, 2)})
    return {"dir": str(pred_dir), "wall_s": round(seconds, 2), "reused": False}


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
