"""Saving matplotlib figures: atomically (no half-written PNG under its final name) and closed after.

Every figure the package writes (training curves, evaluation box plots, QA pictures) goes through
`save_png`, so a crash mid-save never leaves a broken picture and figures never pile up in memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def save_png(fig: Any, path: Path, dpi: int = 90) -> Path:
    """Write `fig` (a matplotlib Figure) to `path` as PNG via a temp file, then close it.

    Not fsynced: a picture is cheap to redraw, and per-case QA pictures are many.
    """
    import matplotlib.pyplot as plt

    from brats_seg.core.atomic import atomic_path

    path = Path(path)
    try:
        with atomic_path(path, durable=False) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path
