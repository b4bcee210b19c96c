"""`brats-seg quantize`: int8 post-training static quantization of a 2D model, with a report.

    brats-seg quantize --model RUN_OR_CKPT --data ROOT --out int8.pt [--calibration N]

Calibrates on N images of the run's training split, writes OUT (a weights_only recipe: fp32
weights + observer statistics, rebuilt bitwise by brats_seg.seg2d.int8.load_int8; see there why
the converted graph itself is not stored) and OUT.json (the report), and prints fp32 vs int8
latency and mIoU on the validation split side by side (bench/seg2d.py, as `bench 2d` does).
--torchscript also writes a traced int8 TorchScript file (torch.jit.load; deprecated in torch
2.13, hence optional).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="2D training run folder or checkpoint (.pt)")
    p.add_argument("--data", required=True, type=Path, help="dataset root folder (calibration and scoring)")
    p.add_argument("--out", required=True, type=Path, help="int8 file to write (e.g. int8.pt); report: OUT.json")
    p.add_argument("--calibration", type=int, default=16, help="calibration images (default 16)")
    p.add_argument("--calibration-split", default=None, help="split to calibrate on (default: the run's train split)")
    p.add_argument("--eval-split", default=None, help="split to score on (default: the run's val split)")
    p.add_argument("--max-eval-images", type=int, default=0, help="score at most this many images (0: all)")
    p.add_argument("--config", type=Path, default=None, help="2D YAML describing --data (default: the run's own)")
    p.add_argument("--backend", default="x86", help="quantized engine: x86 (default), fbgemm, onednn, qnnpack")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the latency comparison (default 2)")
    p.add_argument("--repeats", type=int, default=12, help="timed forward passes per model (default 12)")
    p.add_argument("--torchscript", type=Path, default=None, help="also write a TorchScript trace of the int8 model")


def _refuse_overwriting_inputs(args: argparse.Namespace) -> None:
    """OUT, OUT.json and --torchscript are new files: never the model, its run's checkpoints and files, its
    config or a dataset file."""
    from brats_seg.core.paths import refuse_overwrite
    from brats_seg.engine.checkpoint import model_checkpoint, run_inputs
    from brats_seg.errors import InputError

    inputs = [*run_inputs(args.model), model_checkpoint(args.model), args.data, *([args.config] if args.config else [])]
    outputs = [("--out", args.out), ("--out", args.out.with_name(args.out.name + ".json"))]
    outputs += [("--torchscript", args.torchscript)] if args.torchscript else []
    data = args.data.resolve()
    for option, path in outputs:
        refuse_overwrite(path, inputs, option, out_is_folder=False)
        if path.exists() and data in path.resolve().parents:
            raise InputError(path, f"{option} is an existing file inside the --data dataset {args.data}; "
                                   "choose a new path, outputs never replace inputs")
    if args.torchscript and args.torchscript.resolve() in {p.resolve() for _, p in outputs[:2]}:
        raise InputError(args.torchscript, "--torchscript is the --out file or its report; choose another path")


def run(args: argparse.Namespace) -> int:
    from brats_seg.bench.seg2d import comparison_table, quantize_and_compare
    from brats_seg.core.atomic import atomic_write_json
    from brats_seg.core.flags import check_count
    from brats_seg.errors import InputError

    check_count(args.threads, "--threads")
    if args.repeats < 1 or args.max_eval_images < 0 or args.calibration < 1:
        raise InputError("quantize", f"--repeats ({args.repeats}) and --calibration ({args.calibration}) must be "
                                     f">= 1, --max-eval-images ({args.max_eval_images}) >= 0")
    _refuse_overwriting_inputs(args)
    report = quantize_and_compare(args.model, args.data, args.out, args.calibration, args.calibration_split,
                                  args.eval_split, args.config, args.backend, args.threads, args.repeats,
                                  args.max_eval_images, args.torchscript)
    report_path = args.out.with_name(args.out.name + ".json")
    atomic_write_json(report_path, report)
    print(comparison_table(report))
    print(f"wrote {args.out} (weights_only int8 recipe; load with brats_seg.seg2d.int8.load_int8) and {report_path}")
    if args.torchscript:
        print(f"wrote {args.torchscript} (TorchScript; load with torch.jit.load)")
    return 0
