"""Sliding window: exact stitching, Gaussian weights, brain-only windows, mirroring TTA, padding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from brats_seg.infer.sliding_window import (WindowConfig, gaussian_importance, mirror_sets, place_windows,
                                            sliding_window, window_size, window_starts)

torch.set_num_threads(1)


class Counting:
    """An identity 'model' (copies its input channels) that records the windows it saw."""

    def __init__(self, transform=None):
        self.calls, self.windows, self.transform, self.shapes = 0, 0, transform, set()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.windows += x.shape[0]
        self.shapes.add(tuple(x.shape[2:]))
        return x.clone() if self.transform is None else self.transform(x)


def brain_volume(shape, channels=2, seed=0) -> torch.Tensor:
    """Random nonzero values inside an ellipsoid, exact zeros outside (like a cropped brain)."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g ** 2 for g in grid) <= 1.0
    data = rng.normal(size=(channels, *shape)).astype(np.float32) + 3.0
    return torch.from_numpy(data * inside)


@pytest.mark.parametrize("shape,patch,overlap", [
    ((40, 36, 33), (16, 16, 16), 0.5),
    ((40, 36, 33), (16, 16, 16), 0.25),
    ((32, 48, 20), (16, 24, 8), 0.75),
    ((37, 29, 41), (32, 32, 32), 0.0),
    ((10, 12, 7), (16, 16, 16), 0.5),  # smaller than the window on every axis
    ((40, 12, 30), (16, 16, 16), 0.5),  # smaller on one axis only
])
def test_identity_model_stitches_back_the_input(shape, patch, overlap):
    image = brain_volume(shape)
    out = sliding_window(image, Counting(), WindowConfig(patch, overlap, batch_size=3))
    assert out.shape == image.shape
    torch.testing.assert_close(out, image, rtol=1e-6, atol=1e-6)


def test_identity_holds_with_every_mirror_and_whole_grid():
    image = brain_volume((30, 26, 22), channels=3)
    model = Counting()
    cfg = WindowConfig((16, 16, 16), 0.5, batch_size=2, mirror_axes=(0, 1, 2), brain_only=False)
    out = sliding_window(image, model, cfg)
    torch.testing.assert_close(out, image, rtol=1e-6, atol=1e-6)
    windows = len(place_windows((30, 26, 22), cfg))
    assert model.windows == 8 * windows


def test_mirroring_averages_flipped_predictions():
    """A model that is not flip-equivariant: its mirrored average differs from the plain output."""
    image = brain_volume((16, 16, 16), channels=1)
    ramp = torch.arange(16, dtype=torch.float32).reshape(1, 1, 16, 1, 1)

    def ramp_model(x):  # output = x * position along axis 0 (changes under flipping)
        return x * ramp

    plain = sliding_window(image, ramp_model, WindowConfig((16, 16, 16)))
    mirrored = sliding_window(image, ramp_model, WindowConfig((16, 16, 16), mirror_axes=(0,)))
    torch.testing.assert_close(plain, image * ramp[0])
    torch.testing.assert_close(mirrored, image * 7.5)  # mean of i and 15 - i


def test_gaussian_weights():
    g = gaussian_importance((16, 24, 8))
    assert g.shape == (16, 24, 8) and g.dtype == torch.float32
    assert float(g.max()) == pytest.approx(1.0) and float(g.min()) > 0
    centre = g[7:9, 11:13, 3:5]
    assert torch.allclose(centre, centre.max().expand_as(centre), rtol=1e-6)  # peak in the middle
    torch.testing.assert_close(g, torch.flip(g, (0, 1, 2)))  # symmetric
    # separable Gaussian with sigma = size / 8 along each axis
    x = torch.arange(24, dtype=torch.float64) - 11.5
    expected = torch.exp(-0.5 * (x / 3.0) ** 2)
    profile = g[7] / g[7].max()
    torch.testing.assert_close(profile[:, 3].double() / profile[:, 3].max(), expected / expected.max(), rtol=1e-5, atol=1e-6)


def test_window_starts_cover_the_axis_evenly():
    assert window_starts(16, 16, 0.5) == [0]
    assert window_starts(10, 16, 0.5) == [0]
    assert window_starts(40, 16, 0.5) == [0, 8, 16, 24]
    assert window_starts(41, 16, 0.5) == [0, 6, 12, 19, 25]
    starts = window_starts(155, 128, 0.5)
    assert starts == [0, 27]
    assert window_starts(128 * 3, 128, 0.0) == [0, 128, 256]


def test_brain_only_skips_windows_without_brain():
    brain = torch.zeros(48, 48, 48, dtype=torch.bool)
    brain[2:6, 2:6, 2:6] = True  # brain only in one corner
    cfg = WindowConfig((16, 16, 16), 0.5)
    every = place_windows(brain.shape, WindowConfig((16, 16, 16), 0.5, brain_only=False))
    kept = place_windows(brain.shape, cfg, brain)
    assert len(every) == 125 and len(kept) == 1 and kept[0] == (0, 0, 0)

    image = torch.zeros(1, 48, 48, 48)
    image[0, 2:6, 2:6, 2:6] = 5.0
    model = Counting()
    out = sliding_window(image, model, cfg)
    assert model.windows == 1
    torch.testing.assert_close(out, image)  # uncovered voxels get the fill value 0


def test_fill_value_outside_the_windows():
    image = torch.zeros(1, 48, 16, 16)
    image[0, :4, :4, :4] = 1.0

    def two_class(x):  # softmax-like output: background 0.25, foreground 0.75 everywhere
        return torch.stack([torch.full_like(x[:, 0], 0.25), torch.full_like(x[:, 0], 0.75)], dim=1)

    out = sliding_window(image, two_class, WindowConfig((16, 16, 16), 0.0), fill=[1.0, 0.0])
    torch.testing.assert_close(out[:, :16], torch.tensor([0.25, 0.75]).reshape(2, 1, 1, 1).expand(2, 16, 16, 16))
    assert torch.all(out[0, 16:] == 1.0) and torch.all(out[1, 16:] == 0.0)


def test_slightly_longer_axes_get_one_longer_window():
    cfg = WindowConfig((128, 128, 128), grow=0.1, multiple=8)
    assert window_size((129, 172, 143), cfg) == (136, 128, 128)  # 143 -> 144 > 140.8: two windows
    assert window_size((129, 172, 143), WindowConfig((128, 128, 128))) == (128, 128, 128)  # grow 0: off
    image = brain_volume((34, 40, 20))
    model = Counting()
    out = sliding_window(image, model, WindowConfig((32, 32, 32), 0.5, grow=0.25, multiple=4))
    assert model.shapes == {(36, 40, 32)} and model.windows == 1
    torch.testing.assert_close(out, image, rtol=1e-6, atol=1e-6)


def test_activation_runs_once_on_the_blend_and_fill_comes_after():
    image = torch.zeros(2, 48, 16, 16)
    image[:, :8] = torch.randn(2, 8, 16, 16)
    calls = []

    def activation(t):
        calls.append(t.shape)
        return torch.sigmoid(t)

    out = sliding_window(image, Counting(), WindowConfig((16, 16, 16), 0.5), fill=[0.0, 1.0], activation=activation)
    assert calls == [(2, 48, 16, 16)]
    torch.testing.assert_close(out[:, :16], torch.sigmoid(image[:, :16]), rtol=1e-6, atol=1e-6)
    assert torch.all(out[0, 24:] == 0.0) and torch.all(out[1, 24:] == 1.0)  # never covered: the fill


def test_mirror_sets():
    assert mirror_sets(()) == [()]
    assert len(mirror_sets((0, 1, 2))) == 8 and mirror_sets((0, 1, 2))[0] == ()
    assert mirror_sets((2,)) == [(), (2,)]
    with pytest.raises(ValueError):
        WindowConfig((16, 16, 16), mirror_axes=(3,))
    with pytest.raises(ValueError):
        WindowConfig((16, 16, 16), overlap=1.0)
