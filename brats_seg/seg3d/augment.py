"""Training augmentation drawn from one NumPy Generator per sample, so a sample is a pure function
of (seed, rank, epoch, index) and no worker or process state leaks into the data stream.

Spatial: rotation about each axis and isotropic scaling become one 3x3 matrix that the patch
reader applies while reading (patches.warped_patch), so a rotated patch costs one interpolation of
a bounding box, never a whole volume. Intensity (per channel, vectorised over the patch):
multiplicative brightness, contrast about the mean, gamma on the [0, 1]-rescaled range, Gaussian
noise, a smooth multiplicative bias field (augment.bias_field_prob, on the channels named by
augment.bias_field_channels), then modality dropout (augment.modality_dropout: the sample loses one
or more channels, never all, set to 0 as a z-scored channel's mean is, which is what
`predict --missing` feeds the network for a sequence that was not acquired). Mirroring last
(views, then one contiguous copy).
"""
from __future__ import annotations

import numpy as np

from brats_seg.seg3d.config import AugmentConfig


def rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """Rotation by angles (radians) about axes 0, 1, 2, applied in that order."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def draw_spatial(rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray | None:
    """A patch-to-volume matrix (rotation / zoom), or None for a plain crop."""
    if not cfg.enabled:
        return None
    rotate = rng.random() < cfg.rotate_prob
    scale = rng.random() < cfg.scale_prob
    if not (rotate or scale):
        return None
    matrix = np.eye(3)
    if rotate:
        limit = np.deg2rad(cfg.rotate_max_deg)
        matrix = rotation_matrix(rng.uniform(-limit, limit, size=3))
    if scale:
        zoom = rng.uniform(*cfg.scale_range)  # > 1 enlarges: the patch covers less of the volume
        matrix = matrix / zoom
    return matrix


def augment_intensity(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig,
                      bias_channels: tuple[int, ...] | None = None) -> np.ndarray:
    """Brightness, contrast, gamma, noise, bias field and modality dropout on a float32 (C, X, Y, Z)
    patch, in place. `bias_channels`: the channels the field is applied to (None: all)."""
    if not cfg.enabled:
        return image
    n = image.shape[0]
    flat = image.reshape(n, -1)
    if rng.random() < cfg.brightness_prob:
        flat *= rng.uniform(*cfg.brightness_range, size=(n, 1)).astype(np.float32)
    if rng.random() < cfg.contrast_prob:
        mean = flat.mean(axis=1, keepdims=True)
        factor = rng.uniform(*cfg.contrast_range, size=(n, 1)).astype(np.float32)
        flat -= mean
        flat *= factor
        flat += mean
    if rng.random() < cfg.gamma_prob:
        _gamma(flat, rng.uniform(*cfg.gamma_range, size=n))
    if rng.random() < cfg.noise_prob:
        sigma = np.float32(rng.uniform(0.0, cfg.noise_std))
        flat += rng.standard_normal(flat.shape, dtype=np.float32) * sigma
    if cfg.bias_field_prob > 0 and rng.random() < cfg.bias_field_prob:
        coeffs = rng.uniform(-cfg.bias_field_coeff, cfg.bias_field_coeff, size=(n, BIAS_TERMS))
        if bias_channels is None:
            apply_bias_field(image, coeffs)
        elif bias_channels:  # drawn for every channel either way: the choice leaves the stream unchanged
            chosen = list(bias_channels)
            image[chosen] = apply_bias_field(image[chosen], coeffs[chosen])
    drop_modalities(image, rng, cfg.modality_dropout)
    return image


# Every product P_i(x) P_j(y) P_k(z) of Legendre polynomials with 0 < i + j + k <= 3 (the constant
# term is left to the brightness step): 19 smooth terms, as in MONAI's RandBiasField and TorchIO.
BIAS_ORDER = 3
BIAS_POWERS = [(i, j, k) for i in range(BIAS_ORDER + 1) for j in range(BIAS_ORDER + 1 - i)
               for k in range(BIAS_ORDER + 1 - i - j) if i + j + k]
BIAS_TERMS = len(BIAS_POWERS)


def bias_log_field(shape: tuple[int, int, int], coeffs: np.ndarray) -> np.ndarray:
    """(C, X, Y, Z) float32 log-field: sum over BIAS_POWERS of coeffs[c, t] * P_i(x) P_j(y) P_k(z) on
    [-1, 1] patch coordinates, contracted one axis at a time (three small matmuls, not 19 volumes)."""
    basis = [np.polynomial.legendre.legvander(np.linspace(-1, 1, size), BIAS_ORDER).T for size in shape]
    grid = np.zeros((coeffs.shape[0], BIAS_ORDER + 1, BIAS_ORDER + 1, BIAS_ORDER + 1))
    for t, (i, j, k) in enumerate(BIAS_POWERS):
        grid[:, i, j, k] = coeffs[:, t]
    bx, by, bz = basis
    return np.einsum("cijk,ix,jy,kz->cxyz", grid, bx, by, bz, optimize=True).astype(np.float32)


def apply_bias_field(image: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """Multiply each channel's intensity above its patch minimum by exp(log-field), in place; returns
    the image.

    The patch holds z-scores, whose zero is the brain mean, not zero signal: the field scales the
    distance from the darkest voxel (the nearest stand-in for no signal) so that bright tissue is
    changed most, as a coil's sensitivity changes a scan."""
    field = np.exp(bias_log_field(image.shape[1:], coeffs))
    for channel, gain in zip(image, field):
        lo = np.float32(channel.min())
        channel -= lo
        channel *= gain
        channel += lo
    return image


def drop_modalities(image: np.ndarray, rng: np.random.Generator, prob: float) -> tuple[int, ...]:
    """With probability `prob`, zero a random non-empty proper subset of the channels, in place;
    returns the channels zeroed. Last of the intensity steps, so no noise or contrast shift brings a
    dropped channel back from the exact 0 that inference feeds for a missing sequence. Each of the
    2**C - 2 subsets (never none, never all) is equally likely. Draws nothing when prob is 0, so a
    run without dropout keeps the sample stream it had before the option existed."""
    n = image.shape[0]
    if prob <= 0 or n < 2 or rng.random() >= prob:
        return ()
    code = int(rng.integers(1, 2**n - 1))  # a bit per channel: 1 .. 2**n - 2 is never none nor all
    dropped = tuple(c for c in range(n) if code >> c & 1)
    image[list(dropped)] = 0.0
    return dropped


def _gamma(flat: np.ndarray, gammas: np.ndarray) -> None:
    """x -> lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma per channel; keeps each channel's range."""
    for row, g in zip(flat, gammas):
        lo, hi = float(row.min()), float(row.max())
        if hi - lo < 1e-6:
            continue
        span = np.float32(hi - lo)
        row -= np.float32(lo)
        row /= span
        np.power(row, np.float32(g), out=row)
        row *= span
        row += np.float32(lo)


def random_flip(image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator,
                cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Mirror each spatial axis with probability flip_prob; returns contiguous arrays."""
    flips = rng.random(3) < cfg.flip_prob if cfg.enabled else np.zeros(3, bool)
    axes = tuple(int(a) for a in np.nonzero(flips)[0])
    if axes:
        image = np.flip(image, axis=tuple(a + 1 for a in axes))
        if label is not None:
            label = np.flip(label, axis=axes)
    image = np.ascontiguousarray(image)
    return image, None if label is None else np.ascontiguousarray(label)
