"""Content stamps of a stage's inputs and outputs: cheap, stable, and enough to tell whether a
pipeline stage is current (same stamps as when it last ran) or must run again."""
from __future__ import annotations

import hashlib
from pathlib import Path

from brats_seg.core.hashing import sha256_file


def content_stamp(path: Path) -> str | None:
    """sha256 of a file; for a folder, of its listing (names, sizes, mtimes); None if missing."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        h = hashlib.sha256()
        for item in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            stat = item.stat()
            h.update(f"{item.relative_to(path).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return h.hexdigest()
    return None


def content_stamps(paths: list[Path]) -> dict[str, str | None]:
    """The stamp of each path, keyed by the path as given."""
    return {str(p): content_stamp(p) for p in paths}
