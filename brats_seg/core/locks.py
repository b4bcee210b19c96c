"""An exclusive lock file, refused at once or after a bounded wait, so two runs on the same output
(and shard) cannot collide and two finishing shards take turns merging."""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from brats_seg.errors import InputError


@contextlib.contextmanager
def exclusive_lock(path: Path, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold `path` locked (flock) for the block; refuse if another process holds it for longer
    than `wait_seconds` (0: refuse at once).

    The kernel drops the lock when its holder dies, so a killed run never leaves a stale lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _acquire(fd, wait_seconds):
            raise InputError(path.parent.parent, "another run is writing this output folder (lock held); "
                                                 "wait for it to finish or use another --out")
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)


def _acquire(fd: int, wait_seconds: float) -> bool:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
