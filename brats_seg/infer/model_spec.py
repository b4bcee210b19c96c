"""What inference needs to know about a trained 3D model besides its weights (a ModelSpec), built
from the checkpoint's ModelMeta. Its own module so that infer.runs (which builds it) and
infer.segmenter (which uses it) do not import each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from brats_seg.engine.model_meta import ModelMeta
from brats_seg.errors import InputError

MODES = ("regions", "labels")


@dataclass(frozen=True)
class ModelSpec:
    """The model's output mode, inputs, window and preprocessing spacing, and its identity."""

    mode: str  # "regions": sigmoid WT, TC, ET; "labels": softmax over 0..3
    channels: tuple[str, ...]
    patch_size: tuple[int, int, int]
    spacing: str | tuple[float, float, float] = "native"  # the run's preprocessing spacing
    name: str = ""
    kwargs: dict = field(default_factory=dict)
    identity: dict = field(default_factory=dict)  # checkpoint path and sha256
    amp_dtype: str | None = None  # what training autocast to on CUDA ('bf16', 'fp16'; None: float32)
    modality_dropout: float = 0.0  # > 0: trained with missing sequences, so `predict --missing` is allowed

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    @classmethod
    def from_meta(cls, meta: ModelMeta, spacing: Any = "native", identity: dict | None = None) -> "ModelSpec":
        """From a task-3d checkpoint's ModelMeta (see engine.checkpoint.load_model)."""
        spacing = spacing if isinstance(spacing, str) else tuple(float(v) for v in spacing)
        return cls(meta.loss_mode, tuple(meta.channels), tuple(int(v) for v in meta.patch_size),
                   spacing, meta.model, dict(meta.model_kwargs), dict(identity or {}),
                   getattr(meta, "amp_dtype", None), float(getattr(meta, "modality_dropout", 0.0)))


def respaced(spec: ModelSpec, spacing: tuple[float, float, float], multiple: int) -> ModelSpec:
    """The spec run on a grid of `spacing` mm: the window scaled to the physical extent the network
    trained on (64^3 at 2 mm -> 128^3 at 1 mm), rounded to the network's size `multiple`."""
    if isinstance(spec.spacing, str):
        raise InputError("--spacing", f"the model ({spec.identity.get('checkpoint', 'this run')}) was trained at "
                                      f"{spec.spacing} spacing, with no voxel size to scale its window from; "
                                      "--spacing needs a run preprocessed at a fixed spacing")
    scales = [old / new for old, new in zip(spec.spacing, spacing)]
    if not all(1 / MAX_RESCALE <= s <= MAX_RESCALE for s in scales):
        raise InputError("--spacing", f"{_mm(spacing)} mm is more than {MAX_RESCALE:g}x finer or coarser than the "
                                      f"{_mm(spec.spacing)} mm the model trained at; expected a spacing within that")
    patch = tuple(round(p * s / multiple) * multiple for p, s in zip(spec.patch_size, scales))
    if min(patch) < 2 * multiple:  # below 2 multiples the bottleneck is one voxel, where instance norm fails
        coarsest = min(p * old / (2 * multiple) for p, old in zip(spec.patch_size, spec.spacing))
        raise InputError("--spacing", f"{_mm(spacing)} mm shrinks the {_mm(spec.patch_size, 'x')} window to "
                                      f"{_mm(patch, 'x')}, below the {2 * multiple} voxels a side this network needs; "
                                      f"expected at most {coarsest:g} mm")
    return replace(spec, spacing=tuple(float(v) for v in spacing), patch_size=patch)


MAX_RESCALE = 4.0  # a window 4x the trained one per axis (64^3 -> 256^3) is ~64x the activations


def _mm(values: Sequence[float], sep: str = ",") -> str:
    return sep.join(f"{v:g}" for v in values)
