"""`brats-seg train`: train a model from a YAML config (task 3d by default) on a preprocessed dataset.

    brats-seg train --config pipelines/train/train_cpu.yaml --data DIR/preprocessed.json --out RUN_DIR
                    [--fold K] [--resume | --auto-resume] [section.key=value ...]

Works the same under `torchrun --nproc_per_node=N -m brats_seg train ...` (rank 0 writes).
Exit codes: 0 finished (epochs, steps or time budget reached); 2 bad input; 75 stopped by SIGTERM
after writing a checkpoint (pre-emption), 130 after a first Ctrl-C, the same way (a second Ctrl-C
stops at once, keeping the last checkpoint): rerun the same command with --resume to continue.
--auto-resume (what the launch scripts use): continue when RUN_DIR holds a checkpoint (latest.pt or
previous.pt), else start a new run, so one command line is both the first start and every restart.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def configure(p: argparse.ArgumentParser) -> None:
    add_run_options(p, config_help="training YAML (pipelines/train/train_*.yaml)",
                    data_help="preprocessed.json of the dataset", out_help="run directory (checkpoints, metrics, run.json)",
                    overrides_help="config overrides after the options, e.g. optim.lr=0.001 data.patch_size=[64,64,64]")
    p.add_argument("--fold", type=int, default=None, help="validation fold (sets data.fold; -1: no validation)")
    p.add_argument("--auto-resume", action="store_true",
                   help="--resume when --out holds a checkpoint (latest.pt or previous.pt), else start a new run")


def add_run_options(p: argparse.ArgumentParser, config_help: str, data_help: str, out_help: str,
                    overrides_help: str) -> None:
    """The options every training command shares (train, distill): --config, --data, --out,
    --resume and the KEY=VALUE overrides, with the exit codes as epilog."""
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("exit codes: 0 done; 2 bad input; 75 stopped by SIGTERM, 130 by Ctrl-C, after saving a "
                "checkpoint (continue with --resume; a second Ctrl-C stops at once)")
    p.add_argument("--config", type=Path, default=None,
                   help=f"{config_help}; with --resume defaults to RUN_DIR/config.yaml")
    p.add_argument("--data", type=Path, required=True, help=data_help)
    p.add_argument("--out", type=Path, required=True, help=out_help)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=overrides_help)


def refuse_run_dir_among_inputs(args: argparse.Namespace, *others: Path | None) -> None:
    """--out must not be the data folder, hold the data manifest, or be another input (a teacher;
    on a new run the --config file, which the run's config.yaml would replace)."""
    from brats_seg.core.paths import refuse_overwrite

    data = Path(args.data)
    inputs = [data, data.parent] if data.is_file() else [data]
    if args.config is not None and not args.resume:
        inputs.append(args.config)
    refuse_overwrite(args.out, [*inputs, *(p for p in others if p is not None)], "--out", out_is_folder=True)


def run(args: argparse.Namespace) -> int:
    from brats_seg.engine.tasks import resolve_task, task_of

    if Path(args.out).exists() and not Path(args.out).is_dir():
        from brats_seg.errors import InputError

        raise InputError(args.out, "--out is a file, not a run folder; expected a new or existing run directory")
    if args.auto_resume:
        args.resume = args.resume or has_checkpoint(args.out)
    refuse_run_dir_among_inputs(args)
    task = resolve_task(task_of(args.config, args.out, args.overrides))
    return int(task(args.config, args.data, args.out, args.fold, args.resume, args.overrides))


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a run folder holds a checkpoint to resume from (latest.pt or previous.pt). Every
    rank decides before its process group starts, and no rank writes a checkpoint before all ranks
    have met in DDP's first broadcast, so the ranks cannot decide differently."""
    from brats_seg.engine.checkpoint import LATEST, PREVIOUS, checkpoint_dir

    folder = checkpoint_dir(Path(run_dir))
    return (folder / LATEST).is_file() or (folder / PREVIOUS).is_file()
