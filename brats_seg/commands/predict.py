"""`brats-seg predict`: masks on the input's grid from a trained run, for one case or a whole manifest.

    brats-seg predict --model RUN_DIR --case CASE_DIR --out mask.nii.gz
    brats-seg predict --model RUN_DIR --t1 A --t1ce B --t2 C --flair D --out OUT_DIR
    brats-seg predict --model best.pt --manifest raw.json --shard 0/4 --out PRED_DIR
    brats-seg predict --model RUN_DIR --t1 A --t1ce B --t2 C --missing flair --tta --uncertainty --out mask.nii.gz
    brats-seg predict --model RUN_DIR --t1 DCM/ --t1ce DCM2/ --t2 DCM3/ --flair DCM4/ --series t2=UID --register --out OUT

Any image may be a DICOM series folder (io.dicom); --register registers the series onto the t1ce
(preprocess.register) and the case JSON gets a "registration" section (infer.registration_report).

Every case also gets <mask stem>.json (volumes in mL, uncertainty scores: infer.case_report).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from brats_seg.commands.preprocess import (add_input_bounds, add_register_options, parse_max_voxels, parse_spacing,
                                           parse_spacing_range, register_config)
from brats_seg.core.flags import check_count
from brats_seg.errors import InputError

if TYPE_CHECKING:
    from brats_seg.infer.segmenter import Segmenter

FILE_CHANNELS = ("t1", "t1ce", "t2", "flair")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="training run folder or checkpoint file (.pt)")
    src = p.add_argument_group("input (one of)")
    src.add_argument("--case", type=Path, help="one case folder (BraTS 2018-2023 file names)")
    for channel in FILE_CHANNELS:
        src.add_argument(f"--{channel}", type=Path, help=f"the {channel} image of one case (a file or a DICOM series folder)")
    src.add_argument("--manifest", type=Path, help="raw manifest (brats-seg ingest): predict every case")
    p.add_argument("--shard", default="0/1", help="with --manifest: only shard I of N, e.g. 3/16")
    p.add_argument("--out", required=True, type=Path,
                   help="mask file (.nii.gz) or folder for one case; output folder for --manifest")
    p.add_argument("--overlap", type=float, default=0.5, help="window overlap in [0, 1) (default 0.5)")
    p.add_argument("--spacing", default=None,
                   help="run the network at this voxel size in mm (1.0 or 1,1,2) instead of the run's, the window "
                        "scaled to the same extent (default: the run's spacing)")
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation (8 flips)")
    p.add_argument("--tta-axes", default="0,1,2", help="axes mirrored with --tta (e.g. 0 or 0,1: fewer passes)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="windows per forward pass (default: 2 for windows up to 64^3, where PyTorch's CPU "
                        "3D convolution needs a batch > 1 for its fast path; else 1)")
    p.add_argument("--window-grow", type=float, default=0.1,
                   help="an axis at most this fraction longer than the patch gets one longer window (0: off)")
    p.add_argument("--label-convention", choices=("brats2021", "brats2023", "msd", "brats2024"),
                   help="labels written: brats2021 {0,1,2,4}, brats2023 {0,1,2,3} (default: the input's)")
    p.add_argument("--probabilities", action="store_true", help="also write float32 probability maps")
    p.add_argument("--qa", action="store_true", help="also write a QA picture (PNG) per case")
    p.add_argument("--et-min-mm3", type=float, default=0.0, help="ET volume below this becomes NCR (0: off)")
    p.add_argument("--min-component-mm3", type=float, default=0.0, help="drop tumour components below this (0: off)")
    p.add_argument("--min-component-fraction", type=float, default=0.0,
                   help="drop tumour components below this fraction of the largest one's volume, in [0, 1] "
                        "(0: off; 1: keep the largest only)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the network runs")
    p.add_argument("--force", action="store_true", help="with --manifest: redo cases whose outputs are current")
    _add_missing_uncertainty_amp(p)
    p.add_argument("--series", action="append", default=[], metavar="[CHANNEL=]UID",
                   help="DICOM: the series to read where a folder holds several (repeatable): a UID applies to "
                        "any folder holding it, CHANNEL=UID (e.g. t2=1.2.3) to that channel's folder only")
    add_register_options(p)
    add_input_bounds(p)


def _add_missing_uncertainty_amp(p: argparse.ArgumentParser) -> None:
    p.add_argument("--missing", metavar="NAME[,NAME]",
                   help="channels not acquired (e.g. flair or t2,flair): no file is given or read for them; they "
                        "are zero-filled after normalisation (needs a model trained with augment.modality_dropout)")
    p.add_argument("--uncertainty", nargs="?", const="", default=None, type=str, metavar="PATH",
                   help="with --tta: write the TTA standard deviation of WT, TC, ET (float32 4D NIfTI on the input "
                        "grid); one case: PATH (default <mask stem>_uncertainty.nii.gz); --manifest: a flag, maps "
                        "in OUT/uncertainty/")
    p.add_argument("--amp", default="auto", choices=("auto", "fp16", "bf16", "none"),
                   help="CUDA autocast: auto = the dtype the model trained in (bf16 only where native, else "
                        "float32); ignored on CPU")


def _check_args(args: argparse.Namespace) -> str:
    files = [c for c in FILE_CHANNELS if getattr(args, c) is not None]
    chosen = [name for name, given in (("--case", args.case), ("--t1/--t1ce/--t2/--flair", files),
                                       ("--manifest", args.manifest)) if given]
    if len(chosen) != 1:
        raise InputError("predict", f"give exactly one input: --case, the four --t1 --t1ce --t2 --flair, or "
                                    f"--manifest (got {', '.join(chosen) or 'none'})")
    absent = _check_missing(args, files)
    if files and len(files) + len(absent) != len(FILE_CHANNELS):
        missing = [f"--{c}" for c in FILE_CHANNELS if c not in files and c not in absent]
        raise InputError("predict", f"missing {' '.join(missing)}; expected all four images of the case "
                                    "(or --missing NAME for a sequence that was not acquired)")
    _check_uncertainty(args)
    _check_out_name(args)
    if not 0.0 <= args.overlap < 1.0:
        raise InputError("--overlap", f"{args.overlap} is outside [0, 1); expected e.g. 0.5")
    if not (math.isfinite(args.window_grow) and args.window_grow >= 0):
        raise InputError("--window-grow", f"{args.window_grow} is not valid; expected a finite value >= 0, e.g. 0.1 or 0 (off)")
    for flag, value in (("--et-min-mm3", args.et_min_mm3), ("--min-component-mm3", args.min_component_mm3)):
        if not (math.isfinite(value) and value >= 0):
            raise InputError(flag, f"{value} is not valid; expected a finite volume in mm^3 >= 0 (0 turns the rule off)")
    if not (math.isfinite(args.min_component_fraction) and 0.0 <= args.min_component_fraction <= 1.0):
        raise InputError("--min-component-fraction", f"{args.min_component_fraction} is not valid; expected a "
                                                     "fraction in [0, 1] (0 off, 1 keeps the largest component)")
    if args.shard != "0/1" and not args.manifest:
        raise InputError("--shard", "applies to --manifest only; one case is never sharded")
    if args.data_root and not args.manifest:
        raise InputError("--data-root", "applies to --manifest only (a raw manifest's roots); --case and the "
                                        "--t1 .. --flair files are read where they are")
    for flag, value in (("--batch-size", args.batch_size), ("--threads", args.threads)):
        check_count(value, flag)
    _check_series_register(args)
    return "manifest" if args.manifest else "case"


FILE_SUFFIXES = (".nrrd", ".mha", ".mhd", ".gz", ".json", ".yaml", ".yml", ".pt", ".npy", ".npz", ".png", ".dcm",
                 ".txt", ".csv")  # an --out ending so names a file predict would not write


def _check_out_name(args: argparse.Namespace) -> None:
    """--out is a .nii/.nii.gz name or a folder; 'mask.nrrd' or 'run.json' would silently become a folder.
    An existing path is left to the overwrite checks, which name what it holds."""
    out = Path(args.out)
    if _is_nifti_name(out) or out.exists() or not out.name.lower().endswith(FILE_SUFFIXES):
        return
    raise InputError("--out", f"{out} names a {out.suffix} file; predict writes NIfTI masks: give a .nii.gz "
                              "file name, or a folder")


def check_args(args: argparse.Namespace) -> str:
    """Every value check of the options that reads no file: 'case' or 'manifest'. Pipeline files
    call it when they are planned and `bench learn` on its --predict-args, so a bad value fails
    before anything trains."""
    kind = _check_args(args)
    if args.tta:
        _axes(args.tta_axes)
    parse_max_voxels(args.max_voxels)
    parse_spacing_range(args.spacing_range)
    _run_spacing(args)
    return kind


def _run_spacing(args: argparse.Namespace) -> tuple[float, float, float] | None:
    """--spacing: None (the run's), or a fixed voxel size ('native' is what a run already is or is not)."""
    if args.spacing is None:
        return None
    spacing = parse_spacing(args.spacing)
    if isinstance(spacing, str):
        raise InputError("--spacing", f"{args.spacing!r}: predict takes a voxel size in mm (e.g. 1.0 or 1,1,2); "
                                      "leave it out to use the run's spacing")
    return spacing


def _check_series_register(args: argparse.Namespace) -> None:
    """--series and --register, parsed once (kept on args): one case only."""
    from brats_seg.ingest.layouts import channel_of
    from brats_seg.io.dicom import parse_series

    if args.manifest and (args.series or args.register):
        raise InputError("--series" if args.series else "--register", "applies to one case (--case or the --t1 .. "
                         "--flair images); a raw manifest's cases are already one series each on one grid "
                         "(ingest --register registers them)")
    args.series_choice = parse_series(args.series, FILE_CHANNELS, channel_of)
    args.register_config = register_config(args, args.threads)


def _check_missing(args: argparse.Namespace, files: list[str]) -> tuple[str, ...]:
    """The --missing channels, none of them also given as a file."""
    from brats_seg.infer.missing import parse_missing

    absent = parse_missing(args.missing, FILE_CHANNELS)
    given = [c for c in absent if c in files]
    if given:
        raise InputError("--missing", f"names {', '.join(given)}, but --{given[0]} {getattr(args, given[0])} is given "
                                      "too; drop the file or the --missing name")
    return absent


def _check_uncertainty(args: argparse.Namespace) -> None:
    if args.uncertainty is None:
        return
    if not args.tta:
        raise InputError("--uncertainty", "needs --tta: the map is the spread of the mirrored passes")
    if args.manifest and args.uncertainty:
        raise InputError("--uncertainty", f"takes no PATH with --manifest (got {args.uncertainty!r}); the maps go "
                                          "to OUT/uncertainty/<id>.nii.gz")
    if args.uncertainty and not _is_nifti_name(Path(args.uncertainty)):
        raise InputError("--uncertainty", f"{args.uncertainty!r} is not a .nii or .nii.gz file name")


def _axes(text: str) -> tuple[int, ...]:
    try:
        given = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        given = [9]
    axes = tuple(sorted(set(given)))
    if not axes or len(axes) != len(given) or any(a not in (0, 1, 2) for a in axes):
        raise InputError("--tta-axes", f"{text!r} is not valid; expected distinct spatial axes among 0,1,2 (e.g. 0,1,2)")
    return axes


def load_segmenter(args: argparse.Namespace) -> Segmenter:
    """The Segmenter the arguments describe (imports torch, so only inside `run`)."""
    from brats_seg.infer.postprocess import PostprocessConfig
    from brats_seg.infer.segmenter import Segmenter

    post = PostprocessConfig(et_min_mm3=args.et_min_mm3, min_component_mm3=args.min_component_mm3,
                             min_component_fraction=args.min_component_fraction)  # checked flags
    return Segmenter.from_run(args.model, device=args.device, threads=args.threads, overlap=args.overlap,
                              mirror_axes=_axes(args.tta_axes) if args.tta else (), batch_size=args.batch_size,
                              postprocess=post, grow=args.window_grow, max_voxels=parse_max_voxels(args.max_voxels),
                              spacing_range=parse_spacing_range(args.spacing_range), amp=args.amp,
                              missing=_check_missing(args, []), spacing=_run_spacing(args))


def run(args: argparse.Namespace) -> int:
    kind = _check_args(args)
    if kind == "manifest" and args.out.exists() and not args.out.is_dir():
        raise InputError(args.out, "--out is a file; with --manifest it is the output folder (masks/, cases/, "
                                   "predictions.json, volumes.csv)")
    segmenter = load_segmenter(args)
    if kind == "manifest":
        from brats_seg.core.shards import parse_shard
        from brats_seg.infer.batch import BatchOptions, predict_manifest

        opts = BatchOptions(args.label_convention, args.probabilities, args.qa, args.force, tuple(args.data_root),
                            uncertainty=args.uncertainty is not None)
        summary = predict_manifest(segmenter, args.manifest, args.out, parse_shard(args.shard), opts, args.model)
        return 1 if summary["failed"] else 0
    return _predict_one(segmenter, args)


def _predict_one(segmenter, args: argparse.Namespace) -> int:
    from brats_seg.infer.missing import present_channels
    from brats_seg.infer.prepare import find_case_dir, find_files, read_files

    channels = present_channels(segmenter.spec.channels, segmenter.missing)
    files = (find_case_dir(args.case, channels) if args.case else
             find_files({c: getattr(args, c) for c in FILE_CHANNELS if getattr(args, c) is not None}, channels))
    out = _side_files(args, files.case_id)
    _refuse_overwrite(args, files.paths, out)
    case = read_files(files, segmenter.spacing_range, args.series_choice, args.register_config)
    result = segmenter.predict(case, probabilities=args.probabilities,
                               keep_inputs=args.qa, uncertainty=out["uncertainty"] is not None)
    if case.registration is not None:  # infer.registration_report: the case JSON's "registration" section
        from brats_seg.infer.registration_report import registration_section

        result.sections["registration"] = registration_section(case.registration, out["report"].parent)
    _write_one(segmenter, result, out, args.label_convention or result.label_convention)
    print(f"predict: {result.case_id} -> {out['mask']} ({result.timings['total_s']:.1f} s)", file=sys.stderr)
    return 0


def _side_files(args: argparse.Namespace, case_id: str) -> dict[str, Path | None]:
    """Where one case's outputs go: the mask, its JSON (same stem), and the optional maps and picture."""
    mask_path, stem = _output_paths(args.out, case_id)
    beside = lambda suffix: stem.with_name(stem.name + suffix)  # noqa: E731
    uncertainty = None
    if args.uncertainty is not None:
        uncertainty = Path(args.uncertainty) if args.uncertainty else beside("_uncertainty.nii.gz")
    return {"mask": mask_path, "report": beside(".json"), "uncertainty": uncertainty,
            "probabilities": beside("_probabilities.nii.gz") if args.probabilities else None,
            "qa": beside("_qa.png") if args.qa else None}


def _write_one(segmenter, result, out: dict[str, Path | None], convention: str) -> None:
    """The mask, then the maps and the picture asked for, then the case JSON that names them."""
    import os

    from brats_seg.infer import export
    from brats_seg.infer.case_report import write_case_json

    export.write_mask(result.labels, result.geometry, out["mask"], convention)
    if out["probabilities"]:
        export.write_probabilities(result.probabilities, result.geometry, out["probabilities"])
    if out["uncertainty"]:
        export.write_uncertainty(result.uncertainty, result.geometry, out["uncertainty"])
    if out["qa"]:
        from brats_seg.infer.qa import qa_images, write_qa_png

        write_qa_png(result.labels, qa_images(result.inputs), result.geometry, out["qa"], result.case_id,
                     uncertainty=result.uncertainty)
    folder = out["report"].parent
    umap = os.path.relpath(out["uncertainty"], folder) if out["uncertainty"] else None
    report = result.report(out["mask"].name, convention, umap, segmenter.spec.identity)
    write_case_json(out["report"], report, result.sections)


def _refuse_overwrite(args: argparse.Namespace, images: list[Path], out: dict[str, Path | None]) -> None:
    """No output replaces an image, the model or another output, and a --out folder may not be the one
    holding the images."""
    import os

    from brats_seg.core.paths import refuse_overwrite

    seen: dict[str, str] = {}
    for key, path in out.items():
        if path is None:
            continue
        real = os.path.realpath(path)
        if real in seen:
            flag = "--uncertainty" if "uncertainty" in (key, seen[real]) else "--out"
            raise InputError(flag, f"{path} would hold both the {seen[real]} and the {key} output; choose "
                                   "another path, one output never replaces another")
        seen[real] = key

    from brats_seg.engine.checkpoint import run_inputs

    run_files = run_inputs(Path(args.model), whole_run=True)
    series_files = [f for d in images if d.is_dir() for f in d.iterdir()]  # a DICOM series folder: its slices
    case = Path(args.case) if args.case else None
    case_files = list(case.iterdir()) if case is not None and case.is_dir() else []  # its label map (truth) too
    inputs = [*images, *series_files, *case_files, *run_files]  # the run's checkpoints and files too
    for key, path in out.items():
        if path is not None:
            flag = "--uncertainty" if key == "uncertainty" and args.uncertainty else "--out"
            refuse_overwrite(path, inputs, flag, out_is_folder=False)
    if not _is_nifti_name(args.out):
        refuse_overwrite(args.out, inputs, "--out", out_is_folder=True)


def _is_nifti_name(path: Path) -> bool:
    return path.name.lower().endswith((".nii.gz", ".nii"))


def _output_paths(out: Path, case_id: str) -> tuple[Path, Path]:
    """(mask path, stem for the side files): --out is a .nii/.nii.gz file or a folder."""
    if _is_nifti_name(out):
        name = out.name.lower()
        stem = out.name[: -len(".nii.gz")] if name.endswith(".nii.gz") else out.name[: -len(".nii")]
        return out, out.with_name(stem)
    return out / f"{case_id}.nii.gz", out / case_id
