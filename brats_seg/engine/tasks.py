"""Which trainer a config's `task:` selects. Each entry is "module:function" with the signature
run_training(config, data, out, fold, resume, overrides) -> exit code; modules import lazily, so
a task whose module is not installed yet is reported, not crashed on.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from brats_seg.errors import InputError

TASKS: dict[str, str] = {
    "3d": "brats_seg.engine.loop:run_training",
    "2d": "brats_seg.seg2d.trainer:run_training",
}


def task_of(config: Path | None, out: Path, overrides: list[str]) -> str:
    """The task named by a `task=` override, the config file (RUN_DIR/config.yaml on resume), or '3d'."""
    from brats_seg.seg3d.config import load_yaml_mapping, parse_override

    for text in overrides:
        parts, value = parse_override(text)
        if parts == ["task"]:
            return str(value)
    path = config if config is not None else Path(out) / "config.yaml"
    mapping = load_yaml_mapping(path) if (config is not None or path.is_file()) else {}
    return str(mapping.get("task", "3d"))


def resolve_task(name: str) -> Callable[..., int]:
    if name not in TASKS:
        raise InputError("task", f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    module_name, attr = TASKS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise InputError("task", f"task {name!r} is not available in this install ({module_name} missing)")
        raise
    return getattr(module, attr)
