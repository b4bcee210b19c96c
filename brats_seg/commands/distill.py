"""`brats-seg distill`: train a 2D student from a frozen teacher (knowledge distillation).

    brats-seg distill --config pipelines/camvid_distill_mobilenet.yaml --teacher RUN_OR_CKPT
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


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "exit codes: 0 done; 2 bad input; 75 stopped by SIGTERM after saving a checkpoint (use --resume)"
    p.add_argument("--config", type=Path, default=None,
                   help="2D distillation YAML; with --resume defaults to RUN_DIR/config.yaml")
    p.add_argument("--teacher", type=Path, default=None, help="teacher: 2D run folder or checkpoint (.pt)")
    p.add_argument("--data", type=Path, required=True, help="dataset root folder (or a dataset YAML with root:)")
    p.add_argument("--out", type=Path, required=True, help="student run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. distill.temperature=2 distill.alpha=0.7 train.epochs=5")


def run(args: argparse.Namespace) -> int:
    import json

    from brats_seg.errors import InputError
    from brats_seg.seg2d.trainer import load_run_config, train_2d

    overrides = list(args.overrides)
    if args.teacher is not None:
        if not args.teacher.exists():
            raise InputError(args.teacher, "teacher not found; expected a 2D run folder or checkpoint")
        overrides.append(f"distill.teacher={json.dumps(str(args.teacher.resolve()))}")
    cfg, root = load_run_config(args.config, args.data, args.out, args.resume, overrides)
    if not cfg.distill.teacher:
        raise InputError("--teacher", "required: the teacher's run folder or checkpoint")
    return train_2d(cfg, root, args.out, args.resume)
