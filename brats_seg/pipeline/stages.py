"""Stage adapters for pipeline files: each turns a YAML stage into a CLI call plus the paths that
decide whether it is current. Going through the CLI keeps one code path for both ways of running.

Parameters map onto the command's flags by name (`spacing: 2.0` -> `--spacing 2.0`, `tta: true`
-> `--tta`); `overrides:` lists are passed as trailing `key=value` arguments (train).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from brats_seg.errors import InputError


@dataclass
class StageContext:
    argv: list[str]
    inputs: list[Path] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Stage:
    command: str
    positional: tuple[str, ...] = ()       # params passed positionally, in this order
    input_params: tuple[str, ...] = ()      # params naming input files/folders
    output: str = "out"                     # the param naming the output
    output_file: str | None = None          # the file inside the output folder that proves it ran
    config_params: tuple[str, ...] = ()     # paths relative to the pipeline file, not the workdir
    resumable: bool = False                 # an interrupted run is continued with --resume

    def context(self, params: dict, spec_dir: Path, workdir: Path) -> StageContext:
        params = dict(params)
        for key in self.config_params:
            if key in params:
                params[key] = str((spec_dir / params[key]).resolve())
        for key in (*self.input_params, self.output):
            if key in params:
                params[key] = _resolve(params[key], workdir)
        if self.output not in params:
            raise InputError(f"stage {self.command}", f"missing '{self.output}:'; expected the output path")
        inputs = [Path(p) for k in (*self.input_params, *self.config_params) if k in params for p in _as_list(params[k])]
        out = Path(params[self.output])
        outputs = [out / self.output_file if self.output_file else out]
        argv = [self.command] + [str(v) for k in self.positional for v in _as_list(params.pop(k, []))]
        overrides = [str(o) for o in params.pop("overrides", [])]
        for key, value in params.items():
            argv += _flag(key, value)
        return StageContext(argv + overrides, inputs, outputs)

    def run(self, ctx: StageContext) -> None:
        """The command's own run(), so its InputError reaches the user as the one error line."""
        from brats_seg.cli import build_parser

        args = build_parser().parse_args(ctx.argv)
        code = int(args._run(args) or 0)
        if code != 0:
            raise InputError(f"stage {self.command}", f"exited with code {code}; see the messages above")


def _resolve(value, workdir: Path):
    if isinstance(value, list):
        return [_resolve(v, workdir) for v in value]
    return str((workdir / str(value)).resolve())


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _flag(key: str, value) -> list[str]:
    name = "--" + key.replace("_", "-")
    if value is True:
        return [name]
    if value is False or value is None:
        return []
    if isinstance(value, list):
        return [name, ",".join(str(v) for v in value)]
    return [name, str(value)]


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
