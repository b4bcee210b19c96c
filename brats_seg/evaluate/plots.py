"""Box plots of the evaluation: Dice and HD95 per BraTS region (and lesion-wise, when scored), one point per case."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from brats_seg.core.figures import save_png
PANELS = (("dice", "Dice"), ("hd95_mm", "HD95 (mm)"))
LESION_PANELS = (("lesion_dice", "lesion-wise Dice"), ("lesion_hd95_mm", "lesion-wise HD95 (mm)"))


def write_boxplot(rows: list[dict], path: Path) -> Path:
    """Two panels (Dice, HD95 mm; two more lesion-wise when the rows carry them), a box per region
    (WT, TC, ET, then RC where scored) with the cases as dots (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = PANELS + (LESION_PANELS if rows and "lesion_dice" in rows[0] else ())
    regions = list(dict.fromkeys(r["region"] for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, (metric, label) in zip(axes, panels):
        data = [[r[metric] for r in rows if r["region"] == region] for region in regions]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(regions) + 1), regions)
        for i, values in enumerate(data, start=1):
            jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
            ax.scatter(np.asarray(jitter) + i, values, s=8, alpha=0.6, color="black", zorder=3)
        ax.set_title(label)
        if metric.endswith("dice"):
            ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    n = len({r["case"] for r in rows})
    fig.suptitle(f"{n} case{'s' if n != 1 else ''}", fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)
