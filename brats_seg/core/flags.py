"""Range checks shared by several commands' flags, so that each flag means the same everywhere.

A thread count goes to torch.set_num_threads (a huge one makes OpenMP try to start that many
threads); a budget in minutes becomes seconds, where a finite but huge value overflows to inf.
"""
from __future__ import annotations

import math

from brats_seg.errors import InputError

MAX_THREADS = 1024
MAX_MINUTES = 366 * 24 * 60  # a year: any longer budget is a typo, and 60 x 1e308 is inf


def check_count(value: int | None, flag: str, maximum: int = MAX_THREADS) -> None:
    """A count such as --threads or --batch-size: an integer from 1 to `maximum` (None: not given)."""
    if value is not None and not 1 <= value <= maximum:
        raise InputError(flag, f"got {value}; expected an integer from 1 to {maximum}")


def check_minutes(value: float | None, flag: str = "--minutes", what: str = "minutes") -> None:
    """A wall-clock budget in minutes: finite, above 0 and at most a year (None: not given)."""
    if value is not None and not (math.isfinite(value) and 0 < value <= MAX_MINUTES):
        raise InputError(flag, f"got {value}; expected a positive number of {what}, at most {MAX_MINUTES}")
