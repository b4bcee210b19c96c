"""`brats-seg train`: train a model from a YAML config (task 3d by default) on a preprocessed dataset.

    brats-seg train --config pipelines/train_cpu.yaml --data DIR/preprocessed.json --out RUN_DIR
                    [--fold K] [--resume] [section.key=value ...]

Works the same under `torchrun --nproc_per_node=N -m brats_seg train ...` (rank 0 writes).
Exit codes: 0 finished (epochs, steps or time budget reached); 2 bad input; 75 stopped by SIGTERM
after writing a checkpoint (pre-emption): rerun the same command with --resume to continue.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("exit codes: 0 done; 2 bad input; 75 stopped by SIGTERM after saving a checkpoint "
                "(continue with --resume)")
    p.add_argument("--config", type=Path, default=None,
                   help="training YAML (pipelines/train_*.yaml); with --resume defaults to RUN_DIR/config.yaml")
    p.add_argument("--data", type=Path, required=True, help="preprocessed.json of the dataset")
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, metrics, run.json)")
    p.add_argument("--fold", type=int, default=None, help="validation fold (sets data.fold; -1: no validation)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides after the options, e.g. optim.lr=0.001 data.patch_size=[64,64,64]")


def run(args: argparse.Namespace) -> int:
    from brats_seg.engine.tasks import resolve_task, task_of

    task = resolve_task(task_of(args.config, args.out, args.overrides))
    return int(task(args.config, args.data, args.out, args.fold, args.resume, args.overrides))
