"""Box plots of the evaluation: Dice and HD95 per BraTS region, one point per case."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from brats_seg.core.figures import save_png
from brats_seg.io.labels import REGION_NAMES


def write_boxplot(rows: list[dict], path: Path) -> Path:
    """Two panels (Dice, HD95 mm), a box per region with the cases as dots (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    for ax, (metric, label) in zip(axes, (("dice", "Dice"), ("hd95_mm", "HD95 (mm)"))):
        data = [[r[metric] for r in rows if r["region"] == region] for region in REGION_NAMES]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(REGION_NAMES) + 1), REGION_NAMES)
        for i, values in enumerate(data, start=1):
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
            ax.scatter(np.asarray(jitter) + i, values, s=8, alpha=0.6, color="black", zorder=3)
        ax.set_title(label)
        if metric == "dice":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    n = len({r["case"] for r in rows})
    fig.suptitle(f"{n} case{'s' if n != 1 else ''}", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
