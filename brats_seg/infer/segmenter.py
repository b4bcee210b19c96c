"""The Python API: load a model once, segment many cases in memory.

    seg = Segmenter.from_run("runs/demo", threads=2)
    img = seg.segment("data/BraTS-001")              # nibabel image on the input's grid
    res = seg.predict({"t1": ..., "t1ce": ..., "t2": ..., "flair": ...}, probabilities=True)
    res = Segmenter.from_run("runs/md", missing=("flair",), tta=True).predict(case, uncertainty=True)

Per case: read -> the run's preprocessing in memory -> sliding window (Gaussian, brain-only
windows, optional mirroring) -> back to the cropped grid (probabilities resampled, then
thresholded) -> labels on the original grid -> post-processing. Labels are canonical inside
(0 bg, 1 NCR, 2 ED, 3 ET) and written in the requested convention only at export.
Missing sequences (infer.missing) are zero channels after normalisation; `uncertainty=True` adds the
per-region TTA standard deviation on the original grid (infer.sliding_window.sliding_window_spread);
the autocast dtype on CUDA is infer.precision's choice.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch

from brats_seg.errors import InputError
from brats_seg.infer import export
from brats_seg.infer.missing import check_model_allows, fill_missing, parse_missing, present_channels
from brats_seg.infer.model_spec import ModelSpec, respaced
from brats_seg.infer.postprocess import PostprocessConfig, postprocess
from brats_seg.infer.prepare import CaseInput, from_case_dir, from_entry, from_files, prepare
from brats_seg.infer.precision import NAMES as PRECISION_NAMES, inference_dtype
from brats_seg.infer.sliding_window import (DEFAULT_GROW, network_predictor, size_multiple, sliding_window,
                                            sliding_window_spread, window_for)
from brats_seg.io.geometry import VOXEL_SIZE_RANGE_MM, Geometry
from brats_seg.io.regions import activate, background_fill, probabilities_to_labels

@dataclass
class Segmentation:
    """One case's result on the original grid; labels canonical until exported."""

    case_id: str
    labels: np.ndarray  # uint8 (X, Y, Z), canonical
    geometry: Geometry
    label_convention: str  # the input's own convention: the default for writing
    probabilities: np.ndarray | None  # (K, X, Y, Z) float32, or None
    timings: dict[str, float]
    inputs: CaseInput | None = None  # the images as read (for QA pictures)
    uncertainty: np.ndarray | None = None  # (3, X, Y, Z) float32 TTA std of WT, TC, ET, or None
    missing: tuple[str, ...] = ()  # channels predicted without (zero-filled)
    sections: dict = field(default_factory=dict)  # extra case-JSON sections (e.g. "registration")

    def mask_image(self, convention: str | None = None) -> nib.Nifti1Image:
        return export.mask_image(self.labels, self.geometry, convention or self.label_convention)

    def probability_image(self) -> nib.Nifti1Image:
        if self.probabilities is None:
            raise ValueError("probabilities were not kept; call predict(..., probabilities=True)")
        return export.probability_image(self.probabilities, self.geometry)

    def report(self, mask: str, convention: str | None = None, uncertainty_map: str | None = None,
               model: Mapping | None = None) -> dict:
        """The case JSON's content (infer.case_report): volumes, missing channels, uncertainty scores."""
        from brats_seg.infer.case_report import case_report

        return case_report(self.case_id, self.labels, self.geometry.spacing, mask,
                           convention or self.label_convention, self.missing, self.uncertainty,
                           uncertainty_map, model)


class Segmenter:
    """A loaded model plus the inference settings; `predict`/`segment` run one case each.

    overlap: window overlap; tta / mirror_axes: mirroring TTA over all three axes or the given ones;
    grow: an axis at most this fraction longer than the patch is covered by one longer window (a
    129-voxel axis then costs one 136-voxel window instead of two 128-voxel ones; 0 turns it off);
    channels_last: channels_last_3d memory format (measured slower on this CPU, so off by default).
    max_voxels: the most voxels per channel the grid resampled to the run's spacing may have (None:
    preprocessing's MAX_GRID_VOXELS); spacing_range: the input voxel sizes accepted (mm). Both only
    refuse inputs (one error line), they never change a result.
    batch_size: windows per forward; None picks 2 for windows up to 64^3 (PyTorch's CPU conv3d
    falls back to its slow im2col path for a single small window: measured 0.14 s for one 32^3
    window against 0.06 s for two, one thread) and 1 above (large windows take the fast path
    alone, and a second one costs ~0.6 GB at 128^3 for little gain).
    amp: autocast on CUDA ('auto' follows the dtype the model trained in; infer.precision);
    missing: channels given no image, zero-filled (only for a model trained with modality dropout).
    spacing: run the network on a grid of this voxel size (mm per axis) instead of the run's, its
    window scaled to the same physical extent (infer.respacing); None: the run's spacing.
    """

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, device: str | torch.device = "cpu",
                 overlap: float = 0.5, tta: bool = False, mirror_axes: tuple[int, ...] | None = None,
                 batch_size: int | None = None, postprocess: PostprocessConfig | None = None, amp: str = "auto",
                 channels_last: bool = False, grow: float = DEFAULT_GROW, max_voxels: int | None = None,
                 spacing_range: tuple[float, float] = VOXEL_SIZE_RANGE_MM, missing: Sequence[str] = (),
                 spacing: tuple[float, float, float] | None = None) -> None:
        self.device = _check_device(device)
        self.missing = parse_missing(",".join(missing), spec.channels) if missing else ()
        check_model_allows(self.missing, spec.modality_dropout, spec.identity.get("checkpoint", "the model"))
        self.autocast = inference_dtype(amp, self.device, spec.amp_dtype)
        if self.device.type == "cuda":  # fixed window shapes: cuDNN's autotuner picks once per shape
            torch.backends.cudnn.benchmark = True
        self.model = model.to(self.device).eval()
        self.spec = respaced(spec, spacing, size_multiple(model, spec.patch_size)) if spacing else spec
        _check_window_voxels(self.spec.patch_size, max_voxels)
        axes = tuple(mirror_axes) if mirror_axes is not None else ((0, 1, 2) if tta else ())
        self.window = window_for(model, self.spec.patch_size, overlap, batch_size, axes, grow)
        self.postprocess = postprocess or PostprocessConfig()
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.max_voxels, self.spacing_range = max_voxels, tuple(spacing_range)

    @classmethod
    def from_run(cls, path: str | Path, device: str = "cpu", threads: int | None = None, **options) -> "Segmenter":
        """Load RUN_DIR (its best.pt, else latest.pt) or a checkpoint file; options go to __init__."""
        from brats_seg.core.allocator import keep_freed_memory
        from brats_seg.infer.runs import load_run_model

        keep_freed_memory()
        if threads:
            torch.set_num_threads(int(threads))
        model, spec = load_run_model(Path(path), _check_device(device))
        return cls(model, spec, device, **options)

    def settings(self) -> dict:
        """The settings that decide the output (recorded in manifests, part of the skip check)."""
        return {"overlap": self.window.overlap, "mirror_axes": list(self.window.mirror_axes), "grow": self.window.grow,
                "patch_size": list(self.window.patch_size), "spacing": self.spec.spacing,
                "postprocess": self.postprocess.to_dict(), "mode": self.spec.mode, "missing": list(self.missing),
                "precision": PRECISION_NAMES[self.autocast]}

    def segment(self, source: Any, label_convention: str | None = None, root: Path | None = None) -> nib.Nifti1Image:
        """The mask as a nibabel image on the input's grid, in `label_convention` (default: the input's)."""
        return self.predict(source, root=root).mask_image(label_convention)

    def predict(self, source: Any, probabilities: bool = False, root: Path | None = None,
                keep_inputs: bool = False, uncertainty: bool = False) -> Segmentation:
        """`source`: {channel: path}, a case folder, a raw-manifest entry (with `root`), or a CaseInput
        (of the present channels; a missing one is neither needed nor read)."""
        if uncertainty and not self.window.mirror_axes:
            raise InputError("--uncertainty", "needs --tta: the map is the spread of the mirrored passes")
        clock = _Clock()
        case = self._present(self._resolve(source, root))
        clock.lap("read_s")
        image, entry = prepare(case, self.spec.spacing, self.max_voxels)
        image = fill_missing(image, case.channels, self.spec.channels)
        volume = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        clock.lap("preprocess_s")
        probs, std = self._tile(volume, uncertainty)
        del volume
        self._check_finite(probs, case.case_id)
        clock.lap("network_s")
        labels, probs_orig = self._restore(probs, entry, probabilities)
        labels = postprocess(labels, float(np.prod(case.geometry.spacing)), self.postprocess)
        std = None if std is None else self._std_to_original(std, entry)
        clock.lap("restore_s")
        return Segmentation(case.case_id, labels, case.geometry, case.label_convention, probs_orig,
                            clock.timings(), case if keep_inputs else None, std, self.missing)

    def _tile(self, volume: torch.Tensor, uncertainty: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(probabilities, None) or, with uncertainty, (probabilities, (3, ...) TTA std of WT, TC, ET)."""
        if not uncertainty:
            return sliding_window(volume, self._forward, self.window, fill=self._fill(), activation=self._activate), None
        return sliding_window_spread(volume, self._forward, self.window, self._region_probabilities,
                                     fill=self._fill(), activation=self._activate)

    def _region_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, K, ...) logits of one pass -> (B, 3, ...) WT, TC, ET probabilities, whatever the mode."""
        if self.spec.mode == "regions":
            return torch.sigmoid(logits)
        p = torch.softmax(logits, dim=1)  # labels 0 bg, 1 NCR, 2 ED, 3 ET
        return torch.stack([1.0 - p[:, 0], p[:, 1] + p[:, 3], p[:, 3]], dim=1)

    def _std_to_original(self, std: torch.Tensor, entry: dict) -> np.ndarray:
        from brats_seg.preprocess import inverse

        return inverse.probabilities_to_original(std.cpu().numpy(), entry, 0.0).astype(np.float32, copy=False)

    def _present(self, case: CaseInput) -> CaseInput:
        """The case with exactly the present channels, in the model's order."""
        keep = present_channels(self.spec.channels, self.missing)
        if case.channels == keep:
            return case
        lacking = [c for c in keep if c not in case.channels]
        if lacking:
            raise InputError(case.case_id, f"has no images for channels {lacking}; the model expects {keep}")
        return dataclasses.replace(case, images=[case.channel(c) for c in keep], channels=keep,
                                   inputs_sha256={c: v for c, v in case.inputs_sha256.items() if c in keep})

    def _resolve(self, source: Any, root: Path | None) -> CaseInput:
        channels = present_channels(self.spec.channels, self.missing)
        if isinstance(source, CaseInput):
            return source
        if isinstance(source, (str, Path)):
            if not Path(source).is_dir():
                raise InputError(source, "is not a folder; expected a case folder or one file per channel")
            return from_case_dir(source, channels, self.spacing_range)
        if isinstance(source, Mapping) and "images" in source and "id" in source:
            if root is None:
                raise ValueError("a raw-manifest entry needs root= (the manifest's dataset root)")
            return from_entry(dict(source), Path(root), channels, self.spacing_range)
        if isinstance(source, Mapping):
            return from_files(source, channels, spacing_range=self.spacing_range)
        raise TypeError(f"cannot segment a {type(source).__name__}; expected a dict, a folder or a CaseInput")

    def _check_finite(self, probs: torch.Tensor, case_id: str) -> None:
        """NaN > 0.5 is false: a non-finite probability would silently erase a region, so it is an error."""
        if not bool(torch.isfinite(probs).all()):
            bad = int((~torch.isfinite(probs)).sum())
            raise InputError(self.spec.identity.get("checkpoint", "model"),
                             f"produced {bad} non-finite probabilities on case {case_id}; no mask written "
                             "(the model's weights or its AMP precision overflow; retrain or run in float32)")

    def _fill(self) -> float | list[float]:
        return background_fill(self.spec.mode)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network on a batch of windows: logits (B, K, *patch), float32."""
        dtype = self.autocast
        amp = (lambda: torch.autocast("cuda", dtype=dtype)) if dtype is not None else contextlib.nullcontext
        layout = torch.channels_last_3d if self.channels_last else None
        return network_predictor(self.model, amp, layout)(x)

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Blended (K, X, Y, Z) logits -> probabilities, in place where possible."""
        return activate(logits, self.spec.mode)

    def _restore(self, probs: torch.Tensor, entry: dict, keep: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Preprocessed-space probabilities -> (canonical labels, probabilities or None) on the original grid."""
        from brats_seg.preprocess import inverse, spatial

        cropped_shape = tuple(entry["source"]["cropped_shape"])
        if tuple(probs.shape[1:]) == cropped_shape:  # native spacing: threshold on the device
            labels = self._to_labels(probs)
        else:  # resample probabilities (not labels) back, as nnU-Net does, then threshold
            labels = self._to_labels(torch.from_numpy(spatial.resample_image(probs.cpu().numpy(), cropped_shape)))
        labels = inverse.labels_to_original(labels, entry)
        kept = inverse.probabilities_to_original(probs.cpu().numpy(), entry, self._fill()) if keep else None
        return labels, kept

    def _to_labels(self, probs: torch.Tensor) -> np.ndarray:
        return probabilities_to_labels(probs, self.spec.mode).to(torch.uint8).cpu().numpy()


def _check_window_voxels(window: Sequence[int], max_voxels: int | None) -> None:
    """A window larger than the grid bound (predict --spacing scales it) is refused, not allocated."""
    from brats_seg.preprocess.case import MAX_GRID_VOXELS

    limit = max_voxels or MAX_GRID_VOXELS
    if int(np.prod(window)) > limit:
        raise InputError("--spacing", f"the window would be {'x'.join(str(w) for w in window)} voxels, more than "
                                      f"--max-voxels {limit}; expected a coarser spacing or a larger --max-voxels")


class _Clock:
    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 4)
        self.last = now

    def timings(self) -> dict[str, float]:
        return {**self.laps, "total_s": round(time.perf_counter() - self.start, 4)}


def _check_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "cuda was requested but no CUDA device is available; use --device cpu")
    return device
