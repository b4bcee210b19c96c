"""The typed parts of a `bench learn` report that other commands read back: `bench paired`
(per-case Dice of two studies) and `bench merge` (parts of one study joined). A report on disk is
untrusted (hand-edited, truncated, another version's): each reader parses it once into these models,
with every score's range checked, and refuses it in one line otherwise."""
from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

Unit = Annotated[StrictFloat | StrictInt, Field(ge=0, le=1)]
# mm, mm^3, mL: finite, >= 0 and below a bound far past any scan (373.13 mm is BraTS's empty-region HD95)
Score = Annotated[StrictFloat | StrictInt, Field(ge=0, le=1e9, allow_inf_nan=False)]


class Region(BaseModel):
    model_config = ConfigDict(extra="allow")
    dice: Unit
    hd95_mm: Score


class Case(BaseModel):
    model_config = ConfigDict(extra="allow")
    fold: Annotated[StrictInt, Field(ge=0)]
    WT: Region
    TC: Region
    ET: Region


class Variant(BaseModel):
    model_config = ConfigDict(extra="allow")
    cases: dict[StrictStr, Case]


class FoldRun(BaseModel):
    model_config = ConfigDict(extra="allow")
    fold: Annotated[StrictInt, Field(ge=0)]
    held_out: list[StrictStr]


class LearnStudy(BaseModel):
    """What `bench paired` reads."""

    model_config = ConfigDict(extra="allow")
    kind: StrictStr
    config_sha256: StrictStr
    fold_runs: list[FoldRun]
    variants: dict[StrictStr, Variant]


class FullRegion(Region):
    volume_pred_ml: Score
    volume_truth_ml: Score


class FullCase(Case):
    WT: FullRegion
    TC: FullRegion
    ET: FullRegion


class ThresholdRow(BaseModel):
    et_min_mm3: Score
    et_dice: Unit
    tc_dice: Unit
    et_hd95_mm: Score
    et_ml: Score


class ComponentRow(BaseModel):
    min_component_mm3: Score
    min_component_fraction: Unit
    WT_dice: Unit
    TC_dice: Unit
    ET_dice: Unit


class ThresholdStudy(BaseModel):
    model_config = ConfigDict(extra="allow")
    per_case: dict[StrictStr, list[ThresholdRow]]


class ComponentStudy(BaseModel):
    model_config = ConfigDict(extra="allow")
    per_case: dict[StrictStr, list[ComponentRow]]


class PartVariant(BaseModel):
    model_config = ConfigDict(extra="allow")
    predict_args: list[StrictStr]
    cases: dict[StrictStr, FullCase]
    et_threshold: ThresholdStudy
    components: ComponentStudy


class TrainRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: StrictStr
    steps: Annotated[StrictInt, Field(ge=0)] | None
    wall_s: Score | None
    reused: bool


class PartFoldRun(FoldRun):
    train: TrainRecord


class Budget(BaseModel):
    minutes: StrictFloat | StrictInt | None
    steps: StrictInt | None
    time_budget_s: StrictFloat | StrictInt


class LearnPart(BaseModel):
    """What `bench merge` reads: everything a report is recomputed from."""

    model_config = ConfigDict(extra="allow")
    kind: StrictStr
    config: StrictStr
    overrides: list[StrictStr]
    config_sha256: StrictStr
    budget: Budget
    folds: Annotated[StrictInt, Field(ge=2)]
    seed: StrictInt
    split_seed: StrictInt
    predict_args: list[StrictStr]
    et_grid_mm3: list[Score]
    fold_runs: list[PartFoldRun]
    variants: dict[StrictStr, PartVariant]
