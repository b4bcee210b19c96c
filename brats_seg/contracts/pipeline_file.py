"""A pipeline file (`brats-seg run`): its shape and value types, parsed once, one line per problem.

    workdir: runs/demo            # optional; where relative stage paths lead
    vars: {train_budget_s: "210"} # optional; ${NAME} in any string value
    stages:                       # at least one
      - stage: synth              # the command; every other key is one of its options
        out: data/train
        shape: [64, 64, 48]

This module checks what a file can say by itself: known top-level keys, a stage name on every
stage, option names written as identifiers, values that are flags can take (a non-empty string, a
finite number, a boolean, or a list of those). Whether a stage name and its options exist for the
command is the runner's check (brats_seg/pipeline/stages.py), which knows the commands.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, field_validator

from brats_seg.contracts.jsonfile import parse_model, short

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
MAX_TEXT = 4096
MAX_LIST = 1024
Text = Annotated[StrictStr, Field(min_length=1, max_length=MAX_TEXT)]
FLAG_VALUE = "a non-empty string, a finite number, true/false, or a list of those"


def _scalar_ok(value: Any) -> bool:
    if isinstance(value, (bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and 0 < len(value) <= MAX_TEXT


def _one_value(value: Any) -> Any:
    if not _scalar_ok(value):
        raise ValueError(f"value {short(value)} cannot be given to a command option; expected {FLAG_VALUE}")
    return value


def _flag_value(value: Any) -> Any:
    """What a command-line flag can take; anything else (null, a mapping, nan) is refused by value."""
    if isinstance(value, list):
        if not 0 < len(value) <= MAX_LIST:
            raise ValueError(f"a list of {len(value)} values; expected 1..{MAX_LIST} values")
        for item in value:
            _one_value(item)
        return value
    return _one_value(value)


Value = Annotated[Any, AfterValidator(_flag_value)]
VarValue = Annotated[Any, AfterValidator(_one_value)]
EXPECTED = ("a pipeline YAML: a mapping with 'stages' (a list of {stage: NAME, option: value, ...}) and "
            "optional 'workdir' and 'vars'")


class PipelineStage(BaseModel):
    """One stage: the command's name and its options (option name -> value)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Value] = Field(init=False)

    stage: Text

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})

    def model_post_init(self, _context: Any) -> None:
        for key in self.options:
            if not NAME.match(key):
                raise ValueError(f"option name {key!r} is not an identifier; expected a command option "
                                 "written with underscores (min_component_mm3: 100 for --min-component-mm3)")


class PipelineFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workdir: Optional[Text] = None
    vars: Optional[dict[Text, VarValue]] = None
    stages: Annotated[list[PipelineStage], Field(min_length=1, max_length=1000)]

    @field_validator("vars")
    @classmethod
    def _variable_names(cls, value: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        for key in value or {}:
            if not NAME.match(key):
                raise ValueError(f"variable name {key!r} is not an identifier; expected letters, digits and "
                                 "underscores (used as ${NAME})")
        return value

    def variables(self) -> dict[str, str]:
        """The file's vars as the strings ${NAME} is replaced with (true/false as YAML writes them)."""
        return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (self.vars or {}).items()}


def parse_pipeline(path: Path, data: Any) -> PipelineFile:
    """The parsed YAML document as a PipelineFile; InputError naming the file, the field and the value."""
    return parse_model(path, PipelineFile, data, EXPECTED)
