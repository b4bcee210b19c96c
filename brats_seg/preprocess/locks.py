"""An exclusive, non-blocking lock file, so two runs on the same output (and shard) cannot collide."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from brats_seg.errors import InputError


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold `path` locked (flock) for the block; refuse at once if another process holds it.

    The kernel drops the lock when its holder dies, so a killed run never leaves a stale lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(path.parent.parent, "another run is writing this output folder (lock held); "
                                                 "wait for it to finish or use another --out")
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)
