"""Per-case and per-stage files that reruns and later stages read back: typed, so damage is caught.

- preprocess `cases/<id>/entry.json`: a damaged one means "redo this case" (never a crash);
- predict `cases/<id>.json` (the sidecar): likewise, "predict this case again";
- evaluate `summary.json`: what `report` renders; damage is one error line naming the field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional, Union

from pydantic import (BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError,
                      model_validator)

from brats_seg.contracts.jsonfile import read_json, read_model
from brats_seg.contracts.manifests import PredictionCase, PreprocessedCase, RelPath, Sha256
from brats_seg.errors import InputError

Number = Union[StrictInt, StrictFloat]


class PreprocessedEntry(PreprocessedCase):
    """entry.json: the manifest entry of one case plus the config it was made with."""

    config_sha256: Sha256


class PredictionEntry(PredictionCase):
    """A predictions entry with the optional outputs a sidecar lists besides the mask."""

    probabilities: Optional[RelPath] = None
    probabilities_sha256: Optional[Sha256] = None
    qa: Optional[RelPath] = None

    @model_validator(mode="after")
    def _hashed(self) -> "PredictionEntry":
        if self.probabilities is not None and self.probabilities_sha256 is None:
            raise ValueError("probabilities has no probabilities_sha256 recorded")
        return self


class PredictionSidecar(BaseModel):
    model_config = ConfigDict(extra="allow")

    key: Sha256
    entry: PredictionEntry


def read_optional(path: Path, model: type[BaseModel]) -> Optional[BaseModel]:
    """The typed file, or None when it is absent or damaged in any way (the caller redoes the work)."""
    try:
        return model.model_validate(read_json(path, "a brats-seg stage file"))
    except (InputError, ValidationError):
        return None


class Stat(BaseModel):
    model_config = ConfigDict(extra="allow")

    mean: Optional[Number] = None
    std: Optional[Number] = None
    n: Optional[Annotated[StrictInt, Field(ge=0)]] = None


class Conventions(BaseModel):
    model_config = ConfigDict(extra="allow")

    one_empty: dict[StrictStr, Number]


class Summary(BaseModel):
    """evaluate's summary.json: metrics per region (WT, TC, ET), each a dict of statistics."""

    model_config = ConfigDict(extra="allow")

    cases: list[StrictStr]
    regions: dict[StrictStr, dict[StrictStr, Stat]]
    mean_dice: Optional[Number] = None
    conventions: Conventions


def read_summary(path: Path) -> Summary:
    return read_model(path, Summary, "the summary.json written by `brats-seg evaluate`")


def as_plain(model: BaseModel) -> dict[str, Any]:
    """The validated file as the plain dict the stage code works with."""
    return model.model_dump(mode="python", exclude_none=False)
