"""Sliding-window prediction over a brain-cropped volume, with Gaussian blending and mirroring TTA.

Why our own and not MONAI's: windows are placed only where the brain is (a window without a single
nonzero voxel is skipped, which on a cropped BraTS volume leaves few windows to run), the Gaussian
weight map is accumulated once per window (not once per mirrored copy), and the accumulators are
float32 on the cropped volume only. Window placement follows nnU-Net: per axis,
n = ceil((size - patch) / (patch * (1 - overlap))) + 1 starts spread evenly from 0 to size - patch.
`window_for` and `network_predictor` are the settings and forward predict uses; validation
(seg3d/validate.py) uses them too, so the best checkpoint is picked with predict's tiler.
`sliding_window_spread` also returns how much the mirrored passes (and overlapping windows)
disagree: the weighted standard deviation of their probabilities, from two running sums
(sum of w*p and of w*p^2), so memory does not grow with the number of mirrored copies. The sums
are float64: E[p^2] - E[p]^2 in float32 loses ~1e-7 to cancellation, which the square root turns
into a false std of ~3e-4 where every pass agrees (measured on a mirror-symmetric network).
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

Predictor = Callable[[torch.Tensor], torch.Tensor]  # (B, C, *patch) -> (B, K, *patch)
Spread = Callable[[torch.Tensor], torch.Tensor]  # logits (B, K, *patch) -> probabilities (B, R, *patch)
Start = tuple[int, int, int]
DEFAULT_GROW = 0.1  # predict's default: an axis up to 10% longer than the patch gets one window


@dataclass(frozen=True)
class WindowConfig:
    patch_size: tuple[int, int, int]
    overlap: float = 0.5  # fraction of the window shared with its neighbour along each axis
    batch_size: int = 1  # windows per forward pass
    mirror_axes: tuple[int, ...] = ()  # spatial axes (0, 1, 2) mirrored for TTA: 2**len passes
    brain_only: bool = True  # skip windows without a nonzero input voxel
    sigma_scale: float = 1.0 / 8.0  # Gaussian sigma as a fraction of the window size
    grow: float = 0.0  # an axis at most this much longer than the patch gets one longer window
    multiple: int = 1  # grown windows are rounded up to this (the network's size divisor)

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive sizes, got {self.patch_size}")
        if self.grow < 0 or self.multiple < 1:
            raise ValueError(f"grow must be >= 0 and multiple >= 1, got {self.grow}, {self.multiple}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if any(a not in (0, 1, 2) for a in self.mirror_axes) or len(set(self.mirror_axes)) != len(self.mirror_axes):
            raise ValueError(f"mirror_axes must be distinct spatial axes among 0, 1, 2, got {self.mirror_axes}")


def window_for(model: torch.nn.Module, patch_size: tuple[int, int, int], overlap: float = 0.5,
               batch_size: int | None = None, mirror_axes: tuple[int, ...] = (),
               grow: float = DEFAULT_GROW) -> WindowConfig:
    """Predict's window settings for `model`: grown windows rounded to the network's size divisor.

    batch_size None picks 2 windows per forward up to 64^3 and 1 above (see infer.segmenter.Segmenter).
    """
    if batch_size is None:
        batch_size = 2 if np.prod(patch_size) <= 64**3 else 1
    return WindowConfig(tuple(patch_size), overlap, batch_size, tuple(mirror_axes), grow=grow,
                        multiple=size_multiple(model, patch_size))


def size_multiple(model: torch.nn.Module, patch_size: Sequence[int]) -> int:
    """What window sizes must be divisible by: 2**(levels-1) for our U-Net, else the largest power
    of two (up to 32) dividing every patch size (a patch the network trained on is always valid)."""
    depth = getattr(model, "depth", None)
    if isinstance(depth, int) and depth >= 1:
        return 2 ** (depth - 1)
    multiple = 1
    while multiple < 32 and all(p % (multiple * 2) == 0 for p in patch_size):
        multiple *= 2
    return multiple


def network_predictor(model: torch.nn.Module,
                      autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                      memory_format: torch.memory_format | None = None) -> Predictor:
    """The network as a Predictor: float32 logits of its full-resolution output (deep-supervision
    heads dropped), under `autocast`, the windows in `memory_format` when given."""
    def predict(x: torch.Tensor) -> torch.Tensor:
        if memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        with autocast():
            out = model(x)
        return (out[0] if isinstance(out, (list, tuple)) else out).float()
    return predict


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8.0,
                        device: torch.device | str = "cpu") -> torch.Tensor:
    """Separable Gaussian centred on the window, max 1, strictly positive (voxels near the window's
    edge, which see less context, count less when windows overlap)."""
    weights = None
    for n in patch_size:
        x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2.0
        g = torch.exp(-0.5 * (x / max(n * sigma_scale, 1e-6)) ** 2)
        weights = g if weights is None else weights[..., None] * g
    weights = weights / weights.max()
    weights = weights.clamp_min(float(weights[weights > 0].min()))  # never 0: no division by zero
    return weights.to(dtype=torch.float32, device=device).reshape(tuple(patch_size))


def window_size(shape: Sequence[int], cfg: WindowConfig) -> tuple[int, int, int]:
    """The window used on a volume of `shape`: the patch, except that an axis only slightly longer
    than the patch (<= (1 + grow) x patch after rounding up to `multiple`) is covered by one longer
    window. A fully convolutional network accepts it, and 129 voxels then cost one window, not two.
    """
    size = []
    for s, p in zip(shape, cfg.patch_size):
        grown = -(-int(s) // cfg.multiple) * cfg.multiple
        size.append(grown if p < s and grown <= p * (1.0 + cfg.grow) else p)
    return tuple(size)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices along one axis (size >= patch): evenly spread, first 0, last size - patch."""
    if size <= patch:
        return [0]
    steps = math.ceil((size - patch) / (patch * (1.0 - overlap))) + 1
    stride = (size - patch) / (steps - 1)
    return [int(round(stride * i)) for i in range(steps)]


def place_windows(shape: Sequence[int], cfg: WindowConfig, brain: torch.Tensor | None = None,
                  window: Sequence[int] | None = None) -> list[Start]:
    """Every window start of the grid, minus those whose window holds no brain voxel."""
    window = tuple(window or cfg.patch_size)
    grid = itertools.product(*(window_starts(s, p, cfg.overlap) for s, p in zip(shape, window)))
    starts = [tuple(int(v) for v in s) for s in grid]
    if brain is None:
        return starts
    kept = [s for s in starts if bool(brain[_slices(s, window)].any())]
    return kept or starts[:1]  # an all-background volume still gets one window (the output is defined)


def mirror_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """All subsets of `axes` (the empty one first): the flips that mirroring TTA averages."""
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


def sliding_window(image: torch.Tensor, predict: Predictor, cfg: WindowConfig,
                   fill: float | Sequence[float] = 0.0,
                   activation: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(C, X, Y, Z) -> (K, X, Y, Z): predictions blended with Gaussian weights, then `activation`.

    Blending raw outputs (logits) and activating once, as MONAI does, costs one sigmoid/softmax per
    voxel instead of one per window and mirror. Voxels that no window covers (outside the brain)
    get `fill` after the activation (0 for sigmoid regions; [1, 0, 0, 0] for softmax labels).
    Volumes smaller than the window are zero-padded around.
    """
    return _tile(image, predict, cfg, fill, activation, None)[0]


def sliding_window_spread(image: torch.Tensor, predict: Predictor, cfg: WindowConfig, spread: Spread,
                          fill: float | Sequence[float] = 0.0,
                          activation: Callable[[torch.Tensor], torch.Tensor] | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sliding_window's output, (R, X, Y, Z) standard deviation of `spread`(logits) over every
    mirrored pass of every window covering a voxel, Gaussian-weighted like the blend; 0 where no
    window reaches). The mean prediction is exactly sliding_window's."""
    probs, std = _tile(image, predict, cfg, fill, activation, spread)
    return probs, std


def _tile(image: torch.Tensor, predict: Predictor, cfg: WindowConfig, fill: float | Sequence[float],
          activation: Callable[[torch.Tensor], torch.Tensor] | None,
          spread: Spread | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    with torch.inference_mode():
        window = window_size(image.shape[1:], cfg)
        padded, pads = _pad_to_patch(image, window)
        brain = (padded != 0).any(dim=0) if cfg.brain_only else None
        starts = place_windows(padded.shape[1:], cfg, brain, window)
        del brain
        sums = _accumulate(padded, starts, predict, cfg, window, spread)
        del padded
        crop = (slice(None),) + tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, image.shape[1:]))
        total, weight = sums.total[crop], sums.weight[crop[1:]]
        covered = weight > 0
        safe = torch.where(covered, weight, torch.ones_like(weight))
        total /= safe
        if activation is not None:
            total = activation(total)
        fill_t = torch.as_tensor(fill, dtype=total.dtype, device=total.device).reshape(-1, 1, 1, 1)
        std = None
        if spread is not None:
            std = _std(sums.first[crop], sums.second[crop], sums.weight64[crop[1:]].clamp_min(1e-30), covered)
        return torch.where(covered, total, fill_t.expand_as(total)), std


def _std(first: torch.Tensor, second: torch.Tensor, weight: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """sqrt(E[p^2] - E[p]^2) from the weighted sums, in place; clamped at 0 (rounding), 0 uncovered."""
    first /= weight
    second /= weight
    second -= first.square_()
    return second.clamp_min_(0.0).sqrt_().mul_(covered).float()


@dataclass
class _Sums:
    """The running sums of one tiling: weighted logits and weights, and (with a spread) the
    weighted first and second moments of the spread's probabilities."""

    total: torch.Tensor
    weight: torch.Tensor
    first: torch.Tensor | None = None
    second: torch.Tensor | None = None
    weight64: torch.Tensor | None = None  # the weights again in float64, to normalise the moments


def _accumulate(padded: torch.Tensor, starts: list[Start], predict: Predictor, cfg: WindowConfig,
                window: tuple[int, int, int], spread: Spread | None = None) -> _Sums:
    """Sum of weighted predictions and of weights over the windows, in float32."""
    gauss = gaussian_importance(window, cfg.sigma_scale, padded.device)
    shape, device = tuple(padded.shape[1:]), padded.device
    sums = None
    flips = mirror_sets(cfg.mirror_axes)
    for i in range(0, len(starts), cfg.batch_size):
        batch = starts[i:i + cfg.batch_size]
        x = torch.stack([padded[(slice(None),) + _slices(s, window)] for s in batch])
        y, q1, q2 = _predict_mirrored(predict, x, flips, spread)
        if sums is None:
            zeros = lambda k: torch.zeros((k,) + shape, dtype=torch.float32, device=device)  # noqa: E731
            sums = _Sums(zeros(y.shape[1]), torch.zeros(shape, dtype=torch.float32, device=device))
            if spread is not None:
                sums.first, sums.second = zeros(q1.shape[1]).double(), zeros(q1.shape[1]).double()
                sums.weight64, gauss64 = zeros(1)[0].double(), gauss.double()
        for j, s in enumerate(batch):
            region = (slice(None),) + _slices(s, window)
            sums.total[region] += y[j] * gauss
            sums.weight[region[1:]] += gauss
            if spread is not None:
                sums.first[region] += q1[j] * gauss64
                sums.second[region] += q2[j] * gauss64
                sums.weight64[region[1:]] += gauss64
    return sums


def _predict_mirrored(predict: Predictor, x: torch.Tensor, flips: list[tuple[int, ...]],
                      spread: Spread | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Mean of predict over the mirrored copies of the batch, each flipped back (float32); with a
    spread, also the mean of spread(prediction) and of its square over the copies (float64)."""
    out = q1 = q2 = None
    for axes in flips:
        dims = [2 + a for a in axes]
        y = predict(torch.flip(x, dims) if dims else x).float()
        y = torch.flip(y, dims) if dims else y
        if spread is not None:
            q = spread(y).double()
            q1 = q.clone() if q1 is None else q1.add_(q)
            q2 = q.square() if q2 is None else q2.addcmul_(q, q)
        if out is None:  # a copy when more passes follow: predict may return (a view of) its input
            out = y.clone() if len(flips) > 1 else y
        else:
            out.add_(y)
    if len(flips) > 1:
        out /= len(flips)
        if spread is not None:
            q1 /= len(flips)
            q2 /= len(flips)
    return out, q1, q2


def _slices(start: Start, patch: Sequence[int]) -> tuple[slice, slice, slice]:
    return tuple(slice(s, s + p) for s, p in zip(start, patch))


def _pad_to_patch(image: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Zero-pad (C, X, Y, Z) so every axis is at least the patch, split evenly before and after."""
    pads = [((max(p - s, 0)) // 2, max(p - s, 0) - (max(p - s, 0)) // 2) for s, p in zip(image.shape[1:], patch)]
    if not any(lo or hi for lo, hi in pads):
        return image, pads
    flat = [v for lo_hi in reversed(pads) for v in lo_hi]  # F.pad wants the last axis first
    return torch.nn.functional.pad(image, flat), pads
