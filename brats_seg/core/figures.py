"""Saving matplotlib figures: atomically (no half-written PNG under its final name) and closed after."""
from __future__ import annotations

from pathlib import Path


def save_png(fig, path: Path, dpi: int = 90) -> Path:
    import matplotlib.pyplot as plt

    from brats_seg.core.atomic import atomic_path

    path = Path(path)
    try:
        with atomic_path(path, durable=False) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path
