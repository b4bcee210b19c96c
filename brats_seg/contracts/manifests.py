"""The stage manifests as typed models: what every field must be, by type, range and meaning.

A manifest may be edited by hand, so a value that is schema-shaped can still be wrong: a root index
past the list of roots, a channel listed but absent from `images`, a label map that is one of the
images, an unknown label convention, an affine with NaN. Each of these is refused here, where the
file enters, with one line naming the manifest, the case, the field and the value.

The models are the source of truth of the manifest format: `brats_seg/schemas/manifest.schema.json`
(which `data_manifests/` documents) is generated from them (`python -m brats_seg.contracts.schema`);
a test proves the file and the models agree.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError,
                      field_validator, model_validator)

from brats_seg.contracts.jsonfile import describe
from brats_seg.io.labels import CONVENTIONS

Sha256 = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]
CaseId = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)]
RelPath = Annotated[StrictStr, Field(min_length=1, max_length=4096, pattern=r"^[^\x00-\x1f]+$")]  # no NUL/control chars
Number = Union[StrictInt, StrictFloat]
Size = Annotated[StrictInt, Field(ge=1, le=100_000)]
Spacing = Annotated[Number, Field(gt=0, le=1000)]
Vec3Size = Annotated[list[Size], Field(min_length=3, max_length=3)]
Vec3Spacing = Annotated[list[Spacing], Field(min_length=3, max_length=3)]
Row4 = Annotated[list[Number], Field(min_length=4, max_length=4)]
Affine = Annotated[list[Row4], Field(min_length=4, max_length=4)]


class _Model(BaseModel):
    """Unknown keys are kept (later versions may add facts), known keys are checked."""

    model_config = ConfigDict(extra="allow")


def _finite_affine(rows: list[list[float]]) -> list[list[float]]:
    if not all(math.isfinite(v) for row in rows for v in row):
        raise ValueError("affine holds a NaN or infinite value")
    return rows


class FileRecord(_Model):
    """One NIfTI/NRRD/MHA file of a raw case, as ingest read it."""

    path: RelPath
    sha256: Sha256
    shape: Vec3Size
    dtype: StrictStr
    spacing: Vec3Spacing
    affine: Affine
    orientation: Annotated[StrictStr, Field(pattern=r"^[LRAPSI]{3}$")]
    volume_index: Optional[Annotated[StrictInt, Field(ge=0, le=10_000)]] = None
    qform_code: Optional[StrictInt] = None
    sform_code: Optional[StrictInt] = None

    _affine = field_validator("affine")(_finite_affine)


class RawCase(_Model):
    id: CaseId
    root: Annotated[StrictInt, Field(ge=0)]
    channels: Annotated[list[StrictStr], Field(min_length=1, max_length=16)]
    images: dict[StrictStr, FileRecord]
    seg: Optional[FileRecord] = None
    label_convention: Optional[Literal[CONVENTIONS]] = None  # type: ignore[valid-type]
    warnings: list[StrictStr] = []
    links: dict[RelPath, RelPath] = {}  # symlink inside the source (as stored) -> its target at ingest

    @model_validator(mode="after")
    def _meaning(self) -> "RawCase":
        missing = [c for c in self.channels if c not in self.images]
        if missing:
            raise ValueError(f"channels {missing} are listed but have no entry in images")
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"channels {self.channels} name a channel twice")
        if self.seg is not None:
            if self.label_convention is None:
                raise ValueError("has a label map but label_convention is null; expected one of "
                                 f"{', '.join(CONVENTIONS)}")
            shared = [c for c, rec in self.images.items() if rec.path == self.seg.path]
            if shared:
                raise ValueError(f"seg {self.seg.path!r} is the same file as image {shared[0]!r}")
        volumes = [(rec.path, rec.volume_index) for rec in self.images.values()]  # MSD: one 4D file, one volume each
        if len(set(volumes)) != len(volumes):
            raise ValueError("two channels point at the same image volume")
        return self


class PreprocessedCase(_Model):
    id: CaseId
    image: RelPath
    seg: Optional[RelPath] = None
    fg: Optional[RelPath] = None
    shape: Vec3Size
    spacing: Vec3Spacing
    channels: Annotated[list[StrictStr], Field(min_length=1, max_length=16)]
    sha256: dict[StrictStr, Sha256]
    source: dict[StrictStr, Any]

    @model_validator(mode="after")
    def _meaning(self) -> "PreprocessedCase":
        for key in ("image", "seg", "fg"):
            if getattr(self, key) is not None and key not in self.sha256:
                raise ValueError(f"{key} has no sha256 recorded")
        return self


VolumeMl = Annotated[Number, Field(ge=0, le=1e7)]
RegionName = Literal["WT", "TC", "ET"]


class PredictionCase(_Model):
    id: CaseId
    mask: RelPath
    sha256: Sha256
    label_convention: Optional[Literal[CONVENTIONS]] = None  # type: ignore[valid-type]
    # the case report beside the mask (infer.case_report) and what the entry repeats of it
    report: Optional[RelPath] = None
    volumes_ml: Optional[dict[RegionName, VolumeMl]] = None
    label_volumes_ml: Optional[dict[Literal["NCR", "ED", "ET"], VolumeMl]] = None
    uncertainty: Optional[RelPath] = None  # --uncertainty: TTA std map of WT, TC, ET
    uncertainty_sha256: Optional[Sha256] = None
    uncertainty_mean: Optional[dict[RegionName, Optional[Annotated[Number, Field(ge=0, le=1)]]]] = None

    @model_validator(mode="after")
    def _uncertainty_hashed(self) -> "PredictionCase":
        if self.uncertainty is not None and self.uncertainty_sha256 is None:
            raise ValueError("uncertainty has no uncertainty_sha256 recorded")
        return self


class _Envelope(_Model):
    schema_version: Literal[1]
    created_at: StrictStr
    brats_seg_version: StrictStr
    config: dict[StrictStr, Any]
    input_manifest_sha256: Optional[Sha256] = None
    shard: Optional[dict[StrictStr, Any]] = None
    fingerprint: Optional[dict[StrictStr, Any]] = None
    rejected: list[dict[StrictStr, Any]] = []
    warnings: list[StrictStr] = []

    @model_validator(mode="after")
    def _unique_ids(self) -> "_Envelope":
        seen: set[str] = set()
        for case in self.cases:  # type: ignore[attr-defined]
            if case.id in seen:
                raise ValueError(f"duplicate case id {case.id!r}; expected each case once")
            seen.add(case.id)
        return self


class RawManifest(_Envelope):
    stage: Literal["raw"]
    roots: Annotated[list[RelPath], Field(min_length=1, max_length=1000)]
    cases: list[RawCase]

    @model_validator(mode="after")
    def _roots(self) -> "RawManifest":
        for case in self.cases:
            if case.root >= len(self.roots):
                raise ValueError(f"case {case.id!r}: root {case.root} is out of range; the manifest has "
                                 f"{len(self.roots)} root(s)")
        return self


class PreprocessedManifest(_Envelope):
    stage: Literal["preprocessed"]
    cases: list[PreprocessedCase]


class PredictionsManifest(_Envelope):
    stage: Literal["predictions"]
    cases: list[PredictionCase]


MODELS: dict[str, type[_Envelope]] = {"raw": RawManifest, "preprocessed": PreprocessedManifest,
                                      "predictions": PredictionsManifest}


def first_error(exc: ValidationError, data: Any) -> str:
    """One line: where (case id and field path), the value found and what was expected."""
    line = describe(exc)
    loc = list(exc.errors(include_url=False)[0]["loc"])
    if len(loc) >= 2 and loc[0] == "cases" and isinstance(loc[1], int):
        try:
            case_id = data["cases"][loc[1]]["id"]
        except (KeyError, IndexError, TypeError):
            return line
        prefix = "/".join(str(p) for p in loc)
        rest = "/".join(str(p) for p in loc[2:]) or "(entry)"
        return f"case {case_id!r}: {rest}" + line[len(prefix):]
    return line
