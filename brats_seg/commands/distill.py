"""`brats-seg distill`: train a 2D student from a frozen teacher (knowledge distillation).

    brats-seg distill --config pipelines/train/camvid_distill_mobilenet.yaml --teacher RUN_OR_CKPT
                      --data ROOT --out RUN_DIR [--resume] [section.key=value ...]

The 2D trainer (same run folder, checkpoints, resume and exit codes as `brats-seg train`) with
loss alpha·T²·KL(teacher/T || student/T) + (1-alpha)·CE(student, labels); T and alpha are
distill.temperature / distill.alpha. The teacher runs in eval mode under no_grad, beside the
student on the same augmented batch. On --resume the teacher recorded in RUN_DIR/config.yaml is
used unless --teacher is given again.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from brats_seg.commands.train import add_run_options, refuse_run_dir_among_inputs


def configure(p: argparse.ArgumentParser) -> None:
    add_run_options(p, config_help="2D distillation YAML",
                    data_help="dataset root folder (or a dataset YAML with root:)", out_help="student run directory",
                    overrides_help="config overrides, e.g. distill.temperature=2 distill.alpha=0.7 train.epochs=5")
    p.add_argument("--teacher", type=Path, default=None, help="teacher: 2D run folder or checkpoint (.pt)")


def run(args: argparse.Namespace) -> int:
    import json

    from brats_seg.errors import InputError
    from brats_seg.seg2d.trainer import load_run_config, train_2d

    refuse_run_dir_among_inputs(args, args.teacher)
    overrides = list(args.overrides)
    if args.teacher is not None:
        if not args.teacher.exists():
            raise InputError(args.teacher, "teacher not found; expected a 2D run folder or checkpoint")
        overrides.append(f"distill.teacher={json.dumps(str(args.teacher.resolve()))}")
    cfg, root = load_run_config(args.config, args.data, args.out, args.resume, overrides)
    if not cfg.distill.teacher:
        raise InputError("--teacher", "required: the teacher's run folder or checkpoint")
    return train_2d(cfg, root, args.out, args.resume)
