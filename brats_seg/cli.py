"""Command-line entry point: argument parsing only; each subcommand lives in brats_seg/commands/.

Every command module exposes `configure(parser)` (adds its arguments, light imports only) and
`run(args) -> int`. Heavy libraries (torch, monai) are imported inside `run`, so `--help` is fast.
InputError ends the process with exit code 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from brats_seg import __version__
from brats_seg.errors import EXIT_INPUT_ERROR, InputError

# subcommand -> (module under brats_seg.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "write synthetic BraTS-like phantoms (demo and tests)"),
    "ingest": ("ingest", "discover and validate cases, write the raw manifest"),
    "split": ("split", "split a raw manifest into train and held-out manifests by case"),
    "preprocess": ("preprocess", "reorient, crop, resample, normalise; resumable and shardable"),
    "merge": ("merge", "combine shard manifests into one"),
    "train": ("train", "train a 3D or 2D model from a YAML config"),
    "predict": ("predict", "sliding-window inference to masks in the original geometry"),
    "evaluate": ("evaluate", "Dice, HD95 and volumes per case and region"),
    "demo": ("demo", "synth -> ingest -> preprocess -> train -> predict -> evaluate"),
    "run": ("run_pipeline", "run the stages a pipeline YAML declares, skipping current ones"),
    "report": ("report", "Markdown report of a study: metrics table and pictures"),
    "bench": ("bench", "benchmarks side by side against a reference"),
    "predict2d": ("predict2d", "2D segmentation of images to palette PNGs and overlays"),
    "evaluate2d": ("evaluate2d", "mIoU, per-class IoU and pixel accuracy of a 2D model"),
    "distill": ("distill", "knowledge distillation of a 2D student from a teacher"),
    "quantize": ("quantize", "int8 post-training quantization of a 2D model"),
    "doctor": ("doctor", "report versions, threads, devices; check an install or run folder"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is the project's one line (`error: <command>: ...`, exit 2) instead
    of a usage block followed by an error line; `--help` still prints the usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        line = " ".join(f"error: {self.prog}: {message}; see {self.prog} --help".split())
        print(line, file=sys.stderr, flush=True)
        sys.exit(EXIT_INPUT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in COMMANDS (a missing command module is an ImportError, not a gap)."""
    parser = OneLineParser(prog="brats-seg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"brats-seg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        cmd = importlib.import_module(f"brats_seg.commands.{module}")
        p = sub.add_parser(name, help=help_text, description=help_text)
        cmd.configure(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user errors end as one line and exit code 2, not a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except InputError as err:
        print(err.line(), file=sys.stderr, flush=True)
        return EXIT_INPUT_ERROR
    except OSError as err:  # disk full, permissions: the environment, not a bug; one line, no traceback
        if err.errno is None:
            raise
        print(f"error: {err.filename or 'output'}: {err.strerror}; free space or fix permissions, then rerun "
              "(finished work is kept and skipped)", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
