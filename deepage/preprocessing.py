"""Preprocessing, written once: the same code turns stored images into model inputs for training,
evaluation and prediction. Its settings travel with each model config and checkpoint.

Pipeline for a batch ``(B, S, S, 3) uint8 RGB`` (``S`` = ``stored_size``, the ingest size):

1. float in [0, 1], ``(B, 3, S, S)``; antialiased downscale first when the model input is much smaller;
2. one affine resampling per image (``grid_sample``) to ``(B, 3, input_size, input_size)``:
   eval: central crop of ``crop_pct`` of the side; train: random scale, aspect, shift, small rotation, flip;
3. train only: per-image brightness, contrast and saturation jitter;
4. normalisation: ImageNet mean/std, or plain /255 (the study's two choices).

Doing the augmentation on whole batches with one ``grid_sample`` call is what lets one CPU core feed
several thousand images a second.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .imageio import square_resize, to_rgb_uint8

__all__ = ["Preprocessing", "Augmentation", "TRAIN_AUGMENTATION", "IMAGENET_MEAN", "IMAGENET_STD", "prepare_batch",
           "images_to_batch"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """How images become model inputs.

    ``stored_size``: side the image is square-resized to first (the ingest ``--size``; prediction resizes
    face crops the same way). ``input_size``: side the model sees. ``crop_pct``: fraction of the side kept
    by the central crop at evaluation. ``normalization``: ``"imagenet"`` (mean/std) or ``"unit"`` (/255).
    """

    input_size: int = 112
    stored_size: int = 128
    crop_pct: float = 0.9
    normalization: str = "imagenet"

    def __post_init__(self) -> None:
        if self.normalization not in ("imagenet", "unit"):
            raise ValueError(f"normalization must be 'imagenet' or 'unit', got {self.normalization!r}")
        if not 0.3 <= self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must lie in [0.3, 1], got {self.crop_pct}")
        if self.input_size < 8:
            raise ValueError(f"input_size must be at least 8, got {self.input_size}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(**d)


@dataclass(frozen=True)
class Augmentation:
    """Random train-time changes (all per image). Scale is the side of the crop as a fraction of the image."""

    scale: tuple[float, float] = (0.75, 1.0)
    aspect_jitter: float = 0.06
    max_shift: float = 0.06
    max_rotation_deg: float = 10.0
    flip: bool = True
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25


TRAIN_AUGMENTATION = Augmentation()


def _affine(batch: int, pre: Preprocessing, aug: Augmentation | None, gen: torch.Generator | None) -> torch.Tensor:
    """``(B, 2, 3)`` sampling matrices in ``affine_grid``'s normalised coordinates."""
    if aug is None:
        theta = torch.zeros(batch, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = pre.crop_pct
        return theta

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(batch, generator=gen)

    scale = uniform(*aug.scale)
    sx = scale * (1 + uniform(-aug.aspect_jitter, aug.aspect_jitter))
    sy = scale * (1 + uniform(-aug.aspect_jitter, aug.aspect_jitter))
    angle = uniform(-aug.max_rotation_deg, aug.max_rotation_deg) * math.pi / 180
    # Shift the crop anywhere it stays (mostly) inside the image, plus a little jitter.
    tx = (1 - sx).clamp(min=0) * uniform(-1, 1) + uniform(-aug.max_shift, aug.max_shift)
    ty = (1 - sy).clamp(min=0) * uniform(-1, 1) + uniform(-aug.max_shift, aug.max_shift)
    flip = torch.where(torch.rand(batch, generator=gen) < 0.5, -1.0, 1.0) if aug.flip else torch.ones(batch)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([
        torch.stack([sx * cos * flip, -sy * sin, tx], dim=1),
        torch.stack([sx * sin * flip, sy * cos, ty], dim=1),
    ], dim=1)
    return theta


def _jitter(x: torch.Tensor, aug: Augmentation, gen: torch.Generator | None) -> torch.Tensor:
    b = x.shape[0]

    def factor(amount: float) -> torch.Tensor:
        return (1 + amount * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1)).to(x.dtype)

    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = grey + (x - grey) * factor(aug.saturation)
    mean = grey.mean(dim=(2, 3), keepdim=True)
    x = mean + (x - mean) * factor(aug.contrast)
    x = x * factor(aug.brightness)
    return x.clamp_(0, 1)


def prepare_batch(images: torch.Tensor, pre: Preprocessing, augment: Augmentation | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, S, S, 3) uint8 RGB`` → ``(B, 3, input_size, input_size) float32``, normalised.

    ``augment=None`` gives the deterministic evaluation transform.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (B, S, S, 3) uint8 RGB images, got {tuple(images.shape)} {images.dtype}")
    x = images.permute(0, 3, 1, 2).float().div_(255)
    source_side = pre.input_size / pre.crop_pct
    if x.shape[-1] > 1.5 * source_side:
        # grid_sample does not antialias: shrink first so small inputs are not aliased.
        side = round(source_side)
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    theta = _affine(x.shape[0], pre, augment, generator).to(x.device)
    grid = F.affine_grid(theta, [x.shape[0], 3, pre.input_size, pre.input_size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if augment is not None:
        x = _jitter(x, augment, generator)
    if pre.normalization == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x.contiguous()


def images_to_batch(images: list, pre: Preprocessing) -> torch.Tensor:
    """Face crops (PIL images or ``(H, W[, 3|4])`` arrays, **RGB**) → evaluation batch
    ``(B, 3, input_size, input_size)``, resized exactly as ingest resized the training images."""
    stored = np.stack([square_resize(to_rgb_uint8(im), pre.stored_size) for im in images])
    return prepare_batch(torch.from_numpy(stored), pre)
