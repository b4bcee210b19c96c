"""What a checkpoint says about its model: one typed record for both tasks.

Stored in checkpoints (and run.json) as a plain dict, so torch.load(weights_only=True) reads it;
read back through ModelMeta.from_dict, which checks every field and names the file and the field
in one InputError. A meta without `task` is a 3D one (checkpoints from before the 2D task).
Loaders that need one task's model pass `task=`: a 2D run given to 3D inference (or the reverse)
is then refused with one line instead of a KeyError deep inside.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from brats_seg.errors import InputError

FORMAT_VERSION = 1
TASKS = ("3d", "2d")
AMP_DTYPES = ("bf16", "fp16")  # ModelMeta.amp_dtype values (brats_seg.engine.runtime.AMP_NAMES)
BRATS_CHANNELS = ("t1", "t1ce", "t2", "flair")  # the canonical names ingest gives the four MRI sequences
OTHER_COMMANDS = {"3d": "brats-seg predict / evaluate", "2d": "brats-seg predict2d / evaluate2d / quantize"}


def _positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def _is_list(kind: type, n: int | None = None) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        ok = isinstance(v, (list, tuple)) and all(isinstance(x, kind) and not isinstance(x, bool) for x in v)
        return ok and (len(v) == n if n is not None else len(v) > 0)
    return check


# field -> (check, what is expected); absent optional fields stay None
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (lambda v: isinstance(v, str) and bool(v), "a model name"),
    "model_kwargs": (lambda v: isinstance(v, dict), "a mapping of model arguments"),
    "format_version": (lambda v: isinstance(v, int) and 1 <= v <= FORMAT_VERSION,
                       f"a format version up to {FORMAT_VERSION} (newer files need a newer brats-seg)"),
    "loss_mode": (lambda v: v in ("regions", "labels"), "'regions' or 'labels'"),
    "channels": (lambda v: _is_list(str)(v) and set(v) <= set(BRATS_CHANNELS) and len(set(v)) == len(v),
                 f"a list of distinct channel names from {', '.join(BRATS_CHANNELS)}"),
    "patch_size": (lambda v: _is_list(int, 3)(v) and min(v) >= 1, "three patch sizes >= 1"),
    "spacing": (lambda v: _is_list((int, float), 3)(v) and all(_positive(x) for x in v),
                "three finite voxel sizes > 0 in mm"),
    "preprocess": (lambda v: isinstance(v, dict), "the preprocessing config (a mapping)"),
    "num_classes": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a class count >= 1"),
    "ignore_index": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer label"),
    "class_names": (_is_list(str), "a list of class names"),
    "data": (lambda v: isinstance(v, dict), "the data config (a mapping)"),
    "normalize": (lambda v: isinstance(v, dict), "the input normalisation (a mapping)"),
    "distilled_from": (lambda v: isinstance(v, str), "a path"),
    "amp_dtype": (lambda v: v in AMP_DTYPES, f"one of {', '.join(AMP_DTYPES)} (absent: trained in float32)"),
    "modality_dropout": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
                         "a probability in [0, 1) (absent: trained without modality dropout)"),
}
REQUIRED = {"3d": ("model", "model_kwargs", "loss_mode", "patch_size"),
            "2d": ("model", "model_kwargs", "num_classes", "ignore_index")}
# what inference of a task cannot do without, beyond REQUIRED
NEEDED_BY = {"3d": ("channels",), "2d": ()}
THREE_D_EXTRAS = {"regions": ["WT", "TC", "ET"], "labels": "canonical: 0 bg, 1 NCR, 2 ED, 3 ET"}


@dataclass(frozen=True, kw_only=True)
class ModelMeta:
    """The model's identity: architecture, format, and what its task needs to use it."""

    task: str  # '3d' | '2d'
    model: str
    model_kwargs: dict
    format_version: int = FORMAT_VERSION
    # 3D
    loss_mode: str | None = None  # 'regions': sigmoid WT/TC/ET; 'labels': softmax 0..3
    channels: list[str] | None = None
    patch_size: list[int] | None = None
    spacing: list[float] | None = None  # the training data's voxel size
    preprocess: dict | None = None  # the preprocessed manifest's config section (spacing, dtype)
    # 2D
    num_classes: int | None = None
    ignore_index: int | None = None
    class_names: list[str] | None = None
    data: dict | None = None  # the run's data config (eval_scale, splits, format)
    normalize: dict | None = None
    distilled_from: str | None = None
    # both tasks: what training autocast to on CUDA ('bf16', 'fp16'; None: float32, and every
    # checkpoint from before this field); `predict --amp auto` follows it
    amp_dtype: str | None = None
    # 3D: augment.modality_dropout of the run; > 0 lets `predict --missing` zero-fill absent sequences
    modality_dropout: float = 0.0
    extra: dict = field(default_factory=dict, compare=False)  # informational keys kept as stored

    def to_dict(self) -> dict[str, Any]:
        """The plain dict stored in checkpoints and run.json (weights_only-loadable)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}

    def require_task(self, task: str, where: Path | str) -> "ModelMeta":
        """This meta, if it is `task`'s and has what that task's inference needs; else InputError."""
        _check_task(self.task, task, where)
        for name in NEEDED_BY[task]:
            if getattr(self, name) is None:
                raise InputError(where, f"model metadata lacks {name!r}, which {task.upper()} inference needs")
        return self

    @classmethod
    def from_dict(cls, meta: Any, where: Path | str, task: str | None = None) -> "ModelMeta":
        """Checked ModelMeta from a stored dict (old 3D metas have no task); task= also requires it."""
        if not isinstance(meta, dict):
            raise InputError(where, "holds no model metadata ('meta' mapping); not a model checkpoint")
        kind = meta.get("task", "3d")
        if kind not in TASKS:
            raise InputError(where, f"model metadata field 'task': got {kind!r}; expected one of {', '.join(TASKS)}")
        if task is not None:  # the wrong task is the news, not the fields it lacks
            _check_task(kind, task, where)
        known = {f.name for f in fields(cls)} - {"task", "extra"}
        values = {k: v for k, v in meta.items() if k in known}
        for name in REQUIRED[kind]:
            if name not in values:
                raise InputError(where, f"model metadata lacks field {name!r} (a task {kind} checkpoint needs it)")
        for name, value in values.items():
            check, expected = _CHECKS[name]
            if not check(value):
                raise InputError(where, f"model metadata field {name!r}: got {_short(value)}; expected {expected}")
        extra = {k: v for k, v in meta.items() if k not in known and k != "task"}
        _check_consistent(kind, values, where)
        out = cls(task=kind, **values, extra=extra)
        return out.require_task(task, where) if task is not None else out


def size_divisor(model_kwargs: dict) -> int:
    """What each patch size of a 3D U-Net must be a multiple of: 2 per downsampling level."""
    features = model_kwargs.get("features")
    return 2 ** (len(features) - 1) if isinstance(features, (list, tuple)) and features else 1


def _check_consistent(kind: str, values: dict, where: Path | str) -> None:
    """The fields agree with each other and with the model's arguments (what one field alone cannot say)."""
    kwargs = values["model_kwargs"]

    def refuse(name: str, message: str) -> None:
        raise InputError(where, f"model metadata field {name!r}: {message}")

    if kind == "3d":
        factor = size_divisor(kwargs)
        if any(s % factor for s in values["patch_size"]):
            refuse("patch_size", f"got {values['patch_size']}; expected multiples of {factor} (the network has "
                                 f"{len(kwargs['features'])} levels)")
        channels, wanted = values.get("channels"), kwargs.get("in_channels")
        if channels is not None and isinstance(wanted, int) and len(channels) != wanted:
            refuse("channels", f"got {len(channels)} ({', '.join(channels)}); the model takes in_channels={wanted}")
        spacing = (values.get("preprocess") or {}).get("spacing", "native")
        if spacing != "native" and not _CHECKS["spacing"][0](spacing):
            refuse("preprocess.spacing", f"got {_short(spacing)}; expected 'native' or three finite voxel sizes > 0")
    elif isinstance(kwargs.get("num_classes"), int) and kwargs["num_classes"] != values["num_classes"]:
        refuse("num_classes", f"got {values['num_classes']}; the model predicts {kwargs['num_classes']} classes")


def _check_task(kind: str, wanted: str, where: Path | str) -> None:
    if kind != wanted:
        raise InputError(where, f"is not a {wanted.upper()} checkpoint (task {kind}, not {wanted}); "
                                f"for {kind.upper()} models use {OTHER_COMMANDS[kind]}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
