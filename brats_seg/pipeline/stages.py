"""Stage adapters for pipeline files: each turns a YAML stage into a CLI call plus the paths that
decide whether it is current. Going through the CLI keeps one code path for both ways of running.

Options map onto the command's own flags by name (`spacing: 2.0` -> `--spacing 2.0`, `tta: true`
-> `--tta`), checked against the command's parser: an unknown option, a value the flag does not
take or a missing required flag is one error line naming the file and the stage, found before any
stage runs. `overrides:` lists are passed as trailing `key=value` arguments (train). Path options
are relative to the workdir, `config:` files to the pipeline file.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Sequence

from brats_seg.errors import InputError

OVERRIDES = "overrides"
DATA_ROOT = "data_root"


@dataclass
class StageContext:
    argv: list[str]
    inputs: list[Path] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    out: Path = Path(".")


def command_parser(command: str, where: str) -> argparse.ArgumentParser:
    """The command's own argument parser, raising InputError(`where`) instead of exiting."""
    from brats_seg.cli import COMMANDS

    module, help_text = COMMANDS[command]
    cmd = importlib.import_module(f"brats_seg.commands.{module}")
    parser = argparse.ArgumentParser(prog=f"brats-seg {command}", description=help_text, add_help=False)
    cmd.configure(parser)
    parser.set_defaults(_run=cmd.run, _check=getattr(cmd, "check_args", None))

    def error(message: str) -> NoReturn:
        raise InputError(where, f"{message}; expected the options `brats-seg {command} --help` lists")

    parser.error = error  # type: ignore[method-assign]
    return parser


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Option name as a pipeline writes it (min_component_mm3) -> its argparse action."""
    return {a.option_strings[-1].lstrip("-").replace("-", "_"): a
            for a in parser._actions if a.option_strings}  # argparse has no public listing


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


@dataclass(frozen=True)
class Stage:
    command: str
    positional: tuple[str, ...] = ()       # params passed positionally, in this order
    input_params: tuple[str, ...] = ()      # params naming input files/folders
    output: str = "out"                     # the param naming the output
    output_file: str | None = None          # the file inside the output folder that proves it ran
    config_params: tuple[str, ...] = ()     # paths relative to the pipeline file, not the workdir
    resumable: bool = False                 # an interrupted run is continued with --resume

    def context(self, params: dict, spec_dir: Path, workdir: Path, where: str,
                data_roots: Sequence[Path] = ()) -> StageContext:
        """The command line and the paths of one stage; InputError(`where`) for any option the
        command does not take. data_roots: passed as --data-root when the command takes it."""
        parser = command_parser(self.command, where)
        actions = _options(parser)
        if self.output not in params:
            raise InputError(where, f"missing '{self.output}:'; expected the output path")
        if not isinstance(params[self.output], str):
            raise InputError(where, f"'{self.output}:' is {type(params[self.output]).__name__}; expected one path")
        params = self._resolved(params, spec_dir, workdir, actions)
        if data_roots and DATA_ROOT in actions and DATA_ROOT not in params:
            params[DATA_ROOT] = [str(d) for d in data_roots]
        inputs = [Path(p) for k in (*self.input_params, *self.config_params) if k in params for p in _as_list(params[k])]
        out = Path(params[self.output])
        argv = self._argv(parser, actions, params, where)
        parsed = parser.parse_args(argv[1:])  # every type, choice and required flag, before anything runs
        if parsed._check is not None:  # and the values' ranges, where the command can check them alone
            try:
                parsed._check(parsed)
            except InputError as exc:
                raise InputError(where, f"{exc.where}: {exc.message}") from None
        return StageContext(argv, list(dict.fromkeys(inputs)), [out / self.output_file if self.output_file else out], out)

    def _argv(self, parser: argparse.ArgumentParser, actions: dict[str, argparse.Action], params: dict,
              where: str) -> list[str]:
        params = dict(params)
        argv = [self.command] + [_text(v) for k in self.positional for v in _as_list(params.pop(k, []))]
        overrides = [_text(o) for o in _as_list(params.pop(OVERRIDES, []))]
        if overrides and not any(a.dest == OVERRIDES for a in parser._actions):
            raise InputError(where, f"'{OVERRIDES}:' is given but `brats-seg {self.command}` takes no KEY=VALUE "
                                    "overrides")
        bad = next((o for o in overrides if not o.partition("=")[0] or "=" not in o), None)
        if bad is not None:
            raise InputError(where, f"{OVERRIDES}: {bad!r} is not KEY=VALUE; expected a list such as "
                                    "['train.epochs=40', 'optim.lr=0.001']")
        for key, value in params.items():
            if key not in actions:
                raise InputError(where, f"unknown option {key!r} for `brats-seg {self.command}`; expected one of "
                                        f"{', '.join(sorted(actions))}")
            argv += _flag(actions[key], key, value, where)
        return argv + overrides

    def _resolved(self, params: dict, spec_dir: Path, workdir: Path, actions: dict[str, argparse.Action]) -> dict:
        """Config paths against the pipeline file's folder; every other path against the workdir."""
        params = dict(params)
        path_keys = {k for k, a in actions.items() if a.type is Path} | set(self.input_params) | {self.output}
        for key, value in params.items():
            base = spec_dir if key in self.config_params else workdir if key in path_keys else None
            if base is not None:
                resolved = [str((base / str(v)).resolve()) for v in _as_list(value)]
                params[key] = resolved if isinstance(value, list) else resolved[0]
        return params

    def run(self, ctx: StageContext, where: str) -> None:
        """The command's own run(), so its InputError reaches the user as the one error line."""
        args = command_parser(self.command, where).parse_args(ctx.argv[1:])
        code = int(args._run(args) or 0)
        if code == 0:
            return
        from brats_seg.engine.runtime import EXIT_INTERRUPTED, EXIT_PREEMPTED

        if code in (EXIT_PREEMPTED, EXIT_INTERRUPTED):  # training stopped by SIGTERM / Ctrl-C, state saved
            print(f"{where}: `brats-seg {self.command}` stopped with exit {code} after saving its state; run the "
                  "same pipeline again to continue", file=sys.stderr, flush=True)
            raise SystemExit(code)
        raise InputError(where, f"`brats-seg {self.command}` exited with code {code}; see the messages above")


def _flag(action: argparse.Action, key: str, value: Any, where: str) -> list[str]:
    """The command-line words for one option, in the form its argparse action takes."""
    name = action.option_strings[-1]
    if action.nargs == 0:  # store_true / store_false / count
        if not isinstance(value, bool) and str(value).lower() not in ("true", "false"):
            raise InputError(where, f"{key}: {value!r} for the switch {name}; expected true or false")
        return [name] if str(value).lower() == "true" else []
    if isinstance(action, argparse._AppendAction):  # repeatable (--data-root DIR ...)
        return [w for v in _as_list(value) for w in (name, _text(v))]
    if action.nargs in ("+", "*"):
        return [name, *(_text(v) for v in _as_list(value))]
    return [name, ",".join(_text(v) for v in _as_list(value))]


STAGES: dict[str, Stage] = {
    "synth": Stage("synth"),
    "ingest": Stage("ingest", positional=("sources",), input_params=("sources",)),
    "split": Stage("split", positional=("raw",), input_params=("raw",), output_file="raw_test.json"),
    "preprocess": Stage("preprocess", positional=("raw",), input_params=("raw",), output_file="preprocessed.json"),
    "train": Stage("train", input_params=("data",), config_params=("config",), output_file="run.json", resumable=True),
    "predict": Stage("predict", input_params=("manifest", "model"), output_file="predictions.json"),
    "evaluate": Stage("evaluate", input_params=("pred", "truth"), output_file="summary.json"),
    "report": Stage("report", input_params=("eval", "pred", "run"), output_file="report.md"),
}
