"""A study's Markdown report: the metrics table, the training curves, the box plot and the QA pictures.

Pictures are copied next to report.md so the folder can be moved or attached as it is. The files
read (summary.json, run.json) may be damaged or edited by hand: each is parsed once into its model,
and a problem is one error line naming the file and field. The output folder is refused when it
holds any of the files read (outputs never go among the inputs).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, StrictStr

from brats_seg.contracts.jsonfile import read_model
from brats_seg.contracts.stage_files import Summary, as_plain, read_summary
from brats_seg.core.atomic import atomic_write_text
from brats_seg.core.paths import refuse_overwrite
from brats_seg.errors import InputError

MAX_QA_PICTURES = 8
TABLE_METRICS = ("dice", "hd95_mm", "sensitivity", "specificity")


class RunRecord(BaseModel):
    """The part of a training run's run.json the report shows."""

    model_config = ConfigDict(extra="allow")

    status: Optional[StrictStr] = None
    best: Optional[dict[StrictStr, Any]] = None


def _copy(src: Path, out_dir: Path, name: str) -> str | None:
    if not src.is_file():
        return None
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out_dir / "figures" / name)
    return f"figures/{name}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _check_table_metrics(path: Path, summary: Summary) -> None:
    """A region without one of the table's metrics is a damaged file, not a KeyError."""
    for region, metrics in summary.regions.items():
        absent = [m for m in TABLE_METRICS if m not in metrics]
        if absent:
            raise InputError(path, f"regions/{region}: no {absent[0]!r} statistics; expected "
                                   f"{', '.join(TABLE_METRICS)} for every region (the file `brats-seg evaluate` writes)")


def _summary_lines(path: Path, summary: Summary, title: str) -> list[str]:
    from brats_seg.evaluate.stage import format_table

    _check_table_metrics(path, summary)
    one_empty_hd95 = summary.conventions.one_empty.get("hd95_mm")
    if one_empty_hd95 is None:
        raise InputError(path, "conventions/one_empty: no 'hd95_mm'; expected the HD95 given when one side is empty")
    return [f"# {title}", "", f"Cases evaluated: {len(summary.cases)}. "
            f"Mean Dice over WT/TC/ET: **{_number(summary.mean_dice)}**.", "", "## Metrics (mean ± std)", "",
            format_table(as_plain(summary)), "",
            "Empty regions follow BraTS: both empty gives Dice 1 and HD95 0; one empty gives Dice 0 and "
            f"HD95 {one_empty_hd95} mm.", "", *_lesion_lines(path, as_plain(summary).get("lesion_wise"))]


def _lesion_lines(path: Path, lesion: Any) -> list[str]:
    """The lesion-wise method's parameters, when the summary was scored with --lesion-wise."""
    if lesion is None:
        return []
    keys = ("dilation_voxels", "min_volume_mm3", "hd95_penalty_mm")
    if not isinstance(lesion, dict) or not all(isinstance(lesion.get(k), (int, float)) for k in keys):
        raise InputError(path, f"lesion_wise: expected numbers under {', '.join(keys)} (the block "
                               "`brats-seg evaluate --lesion-wise` writes)")
    return [f"Lesion-wise columns follow BraTS 2023: 26-connected lesions, the truth dilated "
            f"{lesion['dilation_voxels']} voxels to match predicted components, truth lesions of at most "
            f"{lesion['min_volume_mm3']:g} mm³ left out, each missed or false-positive lesion scoring Dice 0 "
            f"and HD95 {lesion['hd95_penalty_mm']:g} mm.", ""]


def _read_run(run: Path | None) -> RunRecord | None:
    if run is None or not (run / "run.json").is_file():
        return None
    return read_model(run / "run.json", RunRecord, "the run.json of a `brats-seg train` run")


def _run_section(run: Path, info: RunRecord, out_dir: Path) -> list[str]:
    lines = ["## Training", "", f"- run: `{run}`", f"- status: {info.status}",
             f"- best: `{json.dumps(info.best or {}, default=str)[:300]}`", ""]
    curves = _copy(run / "curves.png", out_dir, "training_curves.png")
    return lines + ([f"![training curves]({curves})", ""] if curves else [])


def _report_inputs(eval_dir: Path, pred_dir: Path | None, run: Path | None) -> tuple[list[Path], list[Path]]:
    """(every file and folder the report reads, the QA pictures it copies)."""
    pictures = sorted((pred_dir / "qa").glob("*.png"))[:MAX_QA_PICTURES] if pred_dir is not None else []
    inputs = [eval_dir, eval_dir / "summary.json", eval_dir / "boxplot.png", *pictures]
    inputs += [pred_dir] if pred_dir is not None else []
    inputs += [run, run / "run.json", run / "curves.png"] if run is not None else []
    return [p for p in inputs if p.exists()], pictures


def write_report(eval_dir: Path, out_dir: Path, pred_dir: Path | None = None, run: Path | None = None,
                 title: str = "brats-seg study") -> Path:
    eval_dir, out_dir = Path(eval_dir), Path(out_dir)
    pred_dir, run = (Path(pred_dir) if pred_dir else None), (Path(run) if run else None)
    summary_path = eval_dir / "summary.json"
    if not summary_path.is_file():
        raise InputError(eval_dir, "no summary.json; expected the folder written by `brats-seg evaluate`")
    inputs, pictures = _report_inputs(eval_dir, pred_dir, run)
    refuse_overwrite(out_dir, inputs, "--out", out_is_folder=True)
    refuse_overwrite(out_dir / "figures", inputs, "--out", out_is_folder=True)
    summary = read_summary(summary_path)
    lines = _summary_lines(summary_path, summary, title)
    info = _read_run(run)  # every file is read and checked before anything is written
    box = _copy(eval_dir / "boxplot.png", out_dir, "boxplot.png")
    lines += [f"![Dice and HD95 per region]({box})", ""] if box else []
    lines += _run_section(run, info, out_dir) if info is not None else []
    if pictures:
        lines += ["## Quality-assurance pictures", "", "Mask over FLAIR and T1ce on the three planes through the tumour.", ""]
        for pic in pictures:
            rel = _copy(pic, out_dir, pic.name)
            lines += [f"### {pic.stem}", "", f"![{pic.stem}]({rel})", ""]
    target = out_dir / "report.md"
    atomic_write_text(target, "\n".join(lines) + "\n")
    return target
