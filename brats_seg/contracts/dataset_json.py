"""dataset.json of MSD (Task01_BrainTumour) and nnU-Net raw datasets, as a typed model.

Only the keys ingest uses are modelled (by type, range and meaning); others pass. MSD writes
`modality` {"0": "FLAIR", ...}, `labels` {"0": "background", "1": "edema", ...}, `training`
[{"image": ..., "label": ...}] and `test` [path, ...]; nnU-Net v2 writes `channel_names`
{"0": "T1", ...}, `labels` {"background": 0, "edema": 1, ...} (a region may list several labels)
and `file_ending`. Paths in `training` / `test` are relative to the dataset folder and may not
leave it (no absolute path, no `..`).
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Optional, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator,
                      model_validator)

from brats_seg.contracts.jsonfile import read_model

Index = Annotated[StrictStr, Field(pattern=r"^[0-9]{1,2}$")]
Name = Annotated[StrictStr, Field(min_length=1, max_length=200)]
LabelValue = Annotated[StrictInt, Field(ge=0, le=255)]
Region = Annotated[list[LabelValue], Field(min_length=1, max_length=255)]


def _inside(path: str) -> str:
    """A dataset.json path stays inside the dataset folder: relative, without '..'."""
    if PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute():
        raise ValueError(f"path {path!r} is absolute; expected a path relative to the dataset folder")
    if ".." in PurePosixPath(path).parts:
        raise ValueError(f"path {path!r} contains '..'; expected a path inside the dataset folder")
    return path


DataPath = Annotated[StrictStr, Field(min_length=1, max_length=4096), AfterValidator(_inside)]


class TrainingEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    image: DataPath
    label: Optional[DataPath] = None


class DatasetJson(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: Optional[StrictStr] = None
    labels: Optional[Union[dict[Index, Name], dict[Name, Union[LabelValue, Region]]]] = None
    modality: Optional[dict[Index, Name]] = None
    channel_names: Optional[dict[Index, Name]] = None
    training: Optional[list[TrainingEntry]] = None
    test: Optional[list[Union[DataPath, TrainingEntry]]] = None
    file_ending: Optional[Annotated[StrictStr, Field(pattern=r"^\.[A-Za-z0-9][A-Za-z0-9.]{0,15}$")]] = None
    numTraining: Optional[Annotated[StrictInt, Field(ge=0)]] = None
    numTest: Optional[Annotated[StrictInt, Field(ge=0)]] = None

    @field_validator("modality", "channel_names")
    @classmethod
    def _contiguous(cls, value: Optional[dict[str, str]]) -> Optional[dict[str, str]]:
        if value is not None and sorted(int(k) for k in value) != list(range(len(value))):
            raise ValueError(f"channel indices {sorted(value)} are not 0..{len(value) - 1}")
        return value

    @model_validator(mode="after")
    def _distinct_label_values(self) -> "DatasetJson":
        """nnU-Net label blocks name each single label once: two names for one value are a typo."""
        singles = [v for v in (self.labels or {}).values() if isinstance(v, int)]
        if len(set(singles)) != len(singles):
            raise ValueError(f"labels: values {sorted(singles)} repeat; expected one name per label value")
        return self

    def channel_block(self) -> Optional[dict[str, str]]:
        """The declared channels, index -> name: nnU-Net's channel_names, else MSD's modality."""
        return self.channel_names or self.modality

    def label_names(self) -> dict[str, Union[int, list[int]]]:
        """The labels block as name -> value(s) (MSD's index -> name turned round); one-label lists are
        read as that label."""
        out: dict[str, Union[int, list[int]]] = {}
        for key, value in (self.labels or {}).items():
            if isinstance(value, str):  # MSD {"1": "edema"}
                out[value] = int(key)
            else:
                out[key] = value[0] if isinstance(value, list) and len(value) == 1 else value
        return out

    def image_paths(self) -> list[tuple[str, Optional[str]]]:
        """(image, label or None) for every training and test entry, in file order."""
        entries = [(e.image, e.label) for e in self.training or []]
        entries += [(e, None) if isinstance(e, str) else (e.image, None) for e in self.test or []]
        return entries


EXPECTED = "an MSD or nnU-Net dataset.json"


def read_dataset_json(path: Path) -> DatasetJson:
    """The typed dataset.json; InputError (one line, file and field) for anything malformed."""
    return read_model(path, DatasetJson, EXPECTED)
