"""RUN_DIR/run.json: what a run was (config, data, split, versions, code) and where it stands
(status, progress, checkpoints, best metrics). Rewritten atomically by rank 0 as the run moves.
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from brats_seg.core.atomic import atomic_write_json

RUN_JSON = "run.json"


def versions() -> dict[str, str]:
    """Versions of the libraries that decide the numbers."""
    import numpy
    import torch

    from brats_seg import __version__

    found = {"python": platform.python_version(), "brats_seg": __version__, "torch": torch.__version__,
             "numpy": numpy.__version__, "cuda": str(torch.version.cuda), "platform": platform.platform()}
    try:
        import monai

        found["monai"] = monai.__version__
    except ImportError:
        pass
    return found


def git_commit(path: Path | None = None) -> str | None:
    """HEAD of the git checkout holding the code (with '-dirty' if modified), or None."""
    folder = Path(path or Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def new_run_info(config: dict, config_hash: str, data_path: Path, data_sha256: str, split: dict,
                 world_size: int, device: str, model_meta: dict, fingerprint: str | None = None) -> dict[str, Any]:
    return {
        "kind": "brats-seg run", "created_at": now(), "updated_at": now(), "status": "running",
        "task": config.get("task", "3d"), "config": config, "config_sha256": config_hash,
        "data": {"manifest": str(Path(data_path).resolve()), "sha256": data_sha256, "fingerprint": fingerprint},
        "split": split, "world_size": world_size, "device": device, "versions": versions(),
        "git_commit": git_commit(), "model": model_meta, "progress": {"step": 0, "epoch": 0},
        "checkpoints": {}, "best": None, "resumed": [],
    }


def load_run_info(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / RUN_JSON
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def write_run_info(run_dir: Path, info: dict[str, Any]) -> None:
    info["updated_at"] = now()
    atomic_write_json(Path(run_dir) / RUN_JSON, info)
