"""Which task's entry a config's `task:` selects. Each entry is "module:function" with the signature
run_training(config, data, out, fold, resume, overrides) -> exit code; modules import lazily, so
`brats-seg train` loads only the task it runs (the 3D task does not import the 2D models).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from brats_seg.core.typed_config import load_yaml_mapping, parse_override
from brats_seg.errors import InputError

TASKS: dict[str, str] = {
    "3d": "brats_seg.seg3d.trainer:run_training",
    "2d": "brats_seg.seg2d.trainer:run_training",
}


def task_of(config: Path | None, out: Path, overrides: list[str]) -> str:
    """The task named by a `task=` override, the config file (RUN_DIR/config.yaml on resume), or '3d'."""
    for text in overrides:
        parts, value = parse_override(text)
        if parts == ["task"]:
            return str(value)
    path = config if config is not None else Path(out) / "config.yaml"
    mapping = load_yaml_mapping(path) if (config is not None or path.is_file()) else {}
    return str(mapping.get("task", "3d"))


def resolve_task(name: str) -> Callable[..., int]:
    """The entry function of task `name`; InputError naming the valid tasks otherwise."""
    if name not in TASKS:
        raise InputError("task", f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    module_name, attr = TASKS[name].split(":")
    return getattr(importlib.import_module(module_name), attr)
