"""A study's Markdown report: the metrics table, the training curves, the box plot and the QA pictures.

Pictures are copied next to report.md so the folder can be moved or attached as it is.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from brats_seg.errors import InputError
from brats_seg.core.atomic import atomic_write_text

MAX_QA_PICTURES = 8


def _copy(src: Path, out_dir: Path, name: str) -> str | None:
    if not src.is_file():
        return None
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out_dir / "figures" / name)
    return f"figures/{name}"


def _run_section(run: Path | None, out_dir: Path) -> list[str]:
    if run is None or not (run / "run.json").is_file():
        return []
    info = json.loads((run / "run.json").read_text())
    lines = ["## Training", "", f"- run: `{run}`", f"- status: {info.get('status')}",
             f"- best: `{json.dumps(info.get('best', {}))[:300]}`", ""]
    curves = _copy(run / "curves.png", out_dir, "training_curves.png")
    return lines + ([f"![training curves]({curves})", ""] if curves else [])


def write_report(eval_dir: Path, out_dir: Path, pred_dir: Path | None = None, run: Path | None = None,
                 title: str = "brats-seg study") -> Path:
    from brats_seg.evaluate.stage import format_table

    eval_dir, out_dir = Path(eval_dir), Path(out_dir)
    if not (eval_dir / "summary.json").is_file():
        raise InputError(eval_dir, "no summary.json; expected the folder written by `brats-seg evaluate`")
    summary = json.loads((eval_dir / "summary.json").read_text())
    lines = [f"# {title}", "", f"Cases evaluated: {len(summary['cases'])}. "
             f"Mean Dice over WT/TC/ET: **{summary['mean_dice']:.3f}**.", "", "## Metrics (mean ± std)", "",
             format_table(summary), "",
             "Empty regions follow BraTS: both empty gives Dice 1 and HD95 0; one empty gives Dice 0 and "
             f"HD95 {summary['conventions']['one_empty']['hd95_mm']} mm.", ""]
    box = _copy(eval_dir / "boxplot.png", out_dir, "boxplot.png")
    lines += [f"![Dice and HD95 per region]({box})", ""] if box else []
    lines += _run_section(Path(run) if run else None, out_dir)
    if pred_dir is not None:
        pictures = sorted((Path(pred_dir) / "qa").glob("*.png"))[:MAX_QA_PICTURES]
        if pictures:
            lines += ["## Quality-assurance pictures", "", "Mask over FLAIR and T1ce on the three planes through the tumour.", ""]
            for pic in pictures:
                rel = _copy(pic, out_dir, pic.name)
                lines += [f"### {pic.stem}", "", f"![{pic.stem}]({rel})", ""]
    target = out_dir / "report.md"
    atomic_write_text(target, "\n".join(lines) + "\n")
    return target
