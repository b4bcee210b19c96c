"""Run metrics: metrics.jsonl (every record), metrics.csv (one row per epoch), curves.png (loss and
the task's validation curves), and TensorBoard when it is installed. Rank 0 only; other ranks get a logger that does nothing.

On resume the JSONL is cut back to the checkpoint's step, so records from steps that are about to
be repeated are not duplicated, and the CSV and PNG are rebuilt from it.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brats_seg.core.atomic import atomic_path, atomic_write_text

JSONL, CSV, PNG = "metrics.jsonl", "metrics.csv", "curves.png"


@dataclass(frozen=True)
class Curves:
    """The validation panel of curves.png: which epoch-record keys to draw (key, legend label)."""

    series: tuple[tuple[str, str], ...]
    ylabel: str
    title: str


class MetricsLogger:
    """Append step/epoch records; rewrite the CSV and the curve plot after each epoch."""

    def __init__(self, run_dir: Path, curves: Curves, enabled: bool = True, tensorboard: bool = True) -> None:
        self.run_dir, self.curves, self.enabled = Path(run_dir), curves, enabled
        self.epochs: list[dict[str, Any]] = []
        self._tb = _tensorboard(self.run_dir) if (enabled and tensorboard) else None

    def resume_at(self, step: int) -> None:
        """Keep only records up to `step` (what the checkpoint has seen)."""
        path = self.run_dir / JSONL
        if not self.enabled or not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if rec.get("step", 0) <= step:
                kept.append(rec)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.epochs = [r for r in kept if r.get("kind") == "epoch"]

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / JSONL, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self._tb.add_scalar(f"{record.get('kind', 'x')}/{key}", value, record.get("step", 0))
        if record.get("kind") == "epoch":
            self.epochs.append(record)
            self.write_csv()
            self.plot()

    def write_csv(self) -> None:
        if not self.epochs:
            return
        keys: list[str] = []
        for rec in self.epochs:
            keys += [k for k in rec if k not in keys and k != "kind"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        for rec in self.epochs:
            writer.writerow({k: rec.get(k, "") for k in keys})
        atomic_write_text(self.run_dir / CSV, buf.getvalue())

    def plot(self) -> None:
        """Loss per epoch and the task's validation curves, side by side."""
        if not self.epochs:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        c = self.curves
        fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
        ep = [r["epoch"] for r in self.epochs]
        ax_loss.plot(ep, [r.get("train_loss") for r in self.epochs], label="train loss")
        ax_loss.set(xlabel="epoch", ylabel="loss", title="training loss")
        val = [r for r in self.epochs if all(key in r for key, _ in c.series)]
        for key, label in c.series:
            ax_val.plot([r["epoch"] for r in val], [r[key] for r in val], marker="o", label=label)
        ax_val.set(xlabel="epoch", ylabel=c.ylabel, title=c.title, ylim=(0, 1))
        ax_val.legend(loc="lower right")
        fig.tight_layout()
        with atomic_path(self.run_dir / PNG) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _tensorboard(run_dir: Path):
    """A SummaryWriter under RUN_DIR/tensorboard, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
