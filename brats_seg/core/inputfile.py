"""The one check before a user's file is opened: it must be a regular file.

A fifo given where a manifest, config or volume is expected would block the read forever, and a
character device such as /dev/zero would never end. Both are refused before opening, with a line
that says what the path is, so that 'not found' is said only of a path that does not exist.
"""
from __future__ import annotations

from pathlib import Path

from brats_seg.errors import InputError


def require_regular_file(path: Path, missing: str, expected: str) -> None:
    """InputError unless `path` (symlinks followed) is a regular file; `missing` is the line for an absent path."""
    if not path.exists():
        raise InputError(path, missing)
    if path.is_dir():
        raise InputError(path, f"is a folder, not a file; expected {expected}")
    if not path.is_file():
        raise InputError(path, f"is not a regular file (a fifo, socket or device); expected {expected}")
