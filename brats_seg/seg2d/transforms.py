"""Joint image+mask augmentation for 2D segmentation, in torch (no torchvision).

Every geometric op moves the image and the mask with the same parameters: images are
resampled bilinearly, masks by nearest neighbour (labels must never be blended), and pixels
that come from outside the image get `ignore_index` in the mask and `fill` in the image.
Colour jitter touches the image only. Images are float CxHxW in [0, 1] until `Normalize`,
masks are int64 HxW. Randomness comes from torch's RNG, so the one training seed (and
DataLoader's per-worker seeding) makes runs repeatable.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Pair = tuple[torch.Tensor, torch.Tensor]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


class Compose:
    def __init__(self, transforms: Sequence[Callable[[torch.Tensor, torch.Tensor], Pair]]):
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        for t in self.transforms:
            image, mask = t(image, mask)
        return image, mask


class Normalize:
    """Subtract the mean, divide by std (ImageNet statistics: the backbones were trained with them)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        return (image - self.mean) / self.std, mask


class RandomScale:
    """Resize by a factor drawn from [low, high]: bilinear image, nearest (pixel-centre) mask."""

    def __init__(self, low: float = 0.5, high: float = 2.0):
        self.low, self.high = low, high

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        s = _uniform(self.low, self.high)
        size = (max(1, round(image.shape[-2] * s)), max(1, round(image.shape[-1] * s)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                              antialias=s < 1)[0]
        mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0]
        return image, mask.long()


class RandomRotate:
    """Rotate by an angle in [-max_degrees, max_degrees] about the centre; corners -> ignore / fill."""

    def __init__(self, max_degrees: float = 10.0, ignore_index: int = 255, fill: float = 0.0):
        self.max_degrees, self.ignore_index, self.fill = max_degrees, ignore_index, fill

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        angle = math.radians(_uniform(-self.max_degrees, self.max_degrees))
        h, w = image.shape[-2:]
        cos, sin = math.cos(angle), math.sin(angle)
        # normalised coords differ in scale along x and y, so correct the off-diagonal by the aspect
        theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]])[None]
        grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
        inside = F.grid_sample(torch.ones(1, 1, h, w), grid, mode="nearest", align_corners=False)[0, 0]
        image = F.grid_sample(image[None], grid, mode="bilinear", align_corners=False)[0]
        image = torch.where(inside > 0, image, torch.full_like(image, self.fill))
        labels = F.grid_sample(mask[None, None].float(), grid, mode="nearest", align_corners=False)[0, 0]
        mask = torch.where(inside > 0, labels.long(), torch.full_like(mask, self.ignore_index))
        return image, mask


class RandomCrop:
    """Pad to at least `size` (image with `fill`, mask with ignore) and crop a random window."""

    def __init__(self, size: int | tuple[int, int], ignore_index: int = 255, fill: float = 0.0):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.ignore_index, self.fill = ignore_index, fill

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        th, tw = self.size
        pad_h, pad_w = max(th - image.shape[-2], 0), max(tw - image.shape[-1], 0)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=self.fill)
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=self.ignore_index)
        top = int(torch.randint(0, image.shape[-2] - th + 1, ()))
        left = int(torch.randint(0, image.shape[-1] - tw + 1, ()))
        return image[:, top:top + th, left:left + tw], mask[top:top + th, left:left + tw]


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        if float(torch.rand(())) < self.p:
            return image.flip(-1), mask.flip(-1)
        return image, mask


def _grey(image: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, 1xHxW."""
    return (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]


class ColourJitter:
    """Brightness, contrast and saturation jitter on the image only (expects [0, 1] values).

    Hue is not jittered: it would need an RGB<->HSV round trip and changes class appearance
    (sky, grass) more than the other three.
    """

    def __init__(self, brightness: float = 0.3, contrast: float = 0.3, saturation: float = 0.3):
        self.b, self.c, self.s = brightness, contrast, saturation

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        image = (image * _uniform(1 - self.b, 1 + self.b)).clamp(0.0, 1.0)
        c = _uniform(1 - self.c, 1 + self.c)
        image = (c * image + (1 - c) * _grey(image).mean()).clamp(0.0, 1.0)
        s = _uniform(1 - self.s, 1 + self.s)
        return (s * image + (1 - s) * _grey(image)).clamp(0.0, 1.0), mask


def train_transform(crop_size: int | tuple[int, int], scale: tuple[float, float] = (0.5, 2.0),
                    rotate_degrees: float = 10.0, jitter: float = 0.3, ignore_index: int = 255) -> Compose:
    """The usual training recipe: jitter, normalise, scale, rotate, pad+crop, flip.

    Normalising before the geometric ops lets padding use 0, i.e. the mean colour.
    """
    steps: list = [ColourJitter(jitter, jitter, jitter)] if jitter > 0 else []
    steps.append(Normalize())
    if scale != (1.0, 1.0):
        steps.append(RandomScale(*scale))
    if rotate_degrees > 0:
        steps.append(RandomRotate(rotate_degrees, ignore_index))
    steps += [RandomCrop(crop_size, ignore_index), RandomHorizontalFlip()]
    return Compose(steps)


def eval_transform() -> Compose:
    """Evaluation: normalise only; the models predict at any input size."""
    return Compose([Normalize()])
