"""Preprocessing, written once: the same code turns stored images into model inputs for training,
evaluation and prediction. Its settings travel with each model config and checkpoint.

Pipeline for a batch ``(B, S, S, 3) uint8 RGB`` (``S`` = ``stored_size``, the ingest size):

1. colour: one per-image affine map of the RGB values (a batched matmul) that does, in one pass,
   the train-time brightness/contrast/saturation jitter, the /255 and the normalisation
   (ImageNet mean/std, or plain /255: the study's two choices);
2. antialiased downscale first when the model input is much smaller than the stored image;
3. geometry: one affine resampling per image (``grid_sample``) to ``(B, 3, input_size, input_size)``:
   eval: central crop of ``crop_pct`` of the side; train: random scale, aspect, shift, small rotation, flip.

Both steps are linear in the pixel values, so their order does not change the result; doing them on
whole batches is what lets two CPU cores feed thousands of images a second.

Where the evaluation transform is a plain crop (the stored pixels' own centres: the bundled model's
central 150 of 160 px), :func:`prepare_eval_batch` computes it in NumPy, and :func:`prepare_batch` calls it
for that case: the module imports torch only when a transform needs it, so prediction with an ONNX graph
runs without PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from .imageio import square_resize, to_rgb_uint8

if TYPE_CHECKING:
    import torch

__all__ = ["Preprocessing", "Augmentation", "TRAIN_AUGMENTATION", "IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS",
           "prepare_batch", "prepare_eval_batch", "images_to_batch", "input_to_stored"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]] | None] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),  # torchvision / timm PyTorch-trained weights
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # TensorFlow-trained weights (EfficientNet-Lite): [-1, 1]
    "unit": None,  # /255 only: the study's from-scratch networks
    # dlib's input_rgb_image: (x - mean) / 256 (dlib's face-recognition ResNet)
    "dlib": ((122.782 / 255, 117.001 / 255, 104.298 / 255), (256 / 255, 256 / 255, 256 / 255)),
}


@dataclass(frozen=True)
class Preprocessing:
    """How images become model inputs.

    ``stored_size``: side the image is square-resized to first (the ingest ``--size``; prediction resizes
    face crops the same way). ``input_size``: side the model sees. ``crop_pct``: fraction of the side kept
    by the central crop at evaluation. ``normalization``: a key of :data:`NORMALIZATIONS`: ``"imagenet"``
    (ImageNet mean/std), ``"inception"`` (to [-1, 1]) or ``"unit"`` (/255).
    """

    input_size: int = 112
    stored_size: int = 128
    crop_pct: float = 0.9
    normalization: str = "imagenet"

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {self.normalization!r}")
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


def _eval_theta(pre: Preprocessing) -> np.ndarray:
    """``(2, 3)`` float32: the evaluation transform's sampling matrix (the central ``crop_pct`` of the side) in
    ``affine_grid``'s normalised coordinates."""
    return np.array([[pre.crop_pct, 0, 0], [0, pre.crop_pct, 0]], np.float32)


def _eval_colour(pre: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """``(3,)`` float32 ``scale, shift`` per channel: the evaluation input is ``scale * x + shift`` for uint8
    values ``x`` (the /255 and the normalisation, without jitter)."""
    scale, shift = np.full(3, 1 / 255.0, np.float32), np.zeros(3, np.float32)
    stats = NORMALIZATIONS[pre.normalization]
    if stats is not None:
        mean, std = np.array(stats[0], np.float32), np.array(stats[1], np.float32)
        scale, shift = scale / std, (shift - mean) / std
    return scale, shift


def _affine(batch: int, pre: Preprocessing, aug: Augmentation | None, gen: torch.Generator | None) -> torch.Tensor:
    """``(B, 2, 3)`` sampling matrices in ``affine_grid``'s normalised coordinates."""
    import torch

    if aug is None:
        return torch.from_numpy(_eval_theta(pre)).expand(batch, 2, 3).clone()

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


def _colour_coefficients(images: torch.Tensor, pre: Preprocessing, aug: Augmentation | None,
                         gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image, per-channel ``(B, 3, 1, 1)`` coefficients ``a, g, c`` such that the model input is
    ``a * x + g * grey(x) + c`` for uint8 values ``x``.

    Saturation (``s*x + (1-s)*grey``), contrast around the image's mean grey ``m`` (``k*y + (1-k)*m``),
    brightness (``*b``), the /255 and the normalisation are all affine in the pixel values, so they fold
    into these three coefficients and cost two passes over the batch instead of eight.
    """
    import torch

    b, device = images.shape[0], images.device
    shape = (b, 3, 1, 1)
    if aug is None:
        scale, shift = (torch.from_numpy(v).to(device).view(1, 3, 1, 1).expand(shape) for v in _eval_colour(pre))
        return scale, torch.zeros(shape, device=device), shift
    sat = con = bri = torch.ones(b)
    mean_grey = torch.zeros(b, device=device)
    if aug is not None:
        def factor(amount: float) -> torch.Tensor:
            return 1 + amount * (2 * torch.rand(b, generator=gen) - 1)  # CPU generator: same on any device

        sat, con, bri = factor(aug.saturation), factor(aug.contrast), factor(aug.brightness)
        luma = torch.tensor([0.299, 0.587, 0.114], device=device)
        mean_grey = images[:, ::8, ::8, :].float().mean(dim=(1, 2)) @ luma  # (B,), from a subsample
    sat, con, bri = sat.to(device), con.to(device), bri.to(device)
    a = (bri * con * sat / 255.0).view(b, 1).expand(b, 3)
    g = (bri * con * (1 - sat) / 255.0).view(b, 1).expand(b, 3)
    c = (bri * (1 - con) * mean_grey / 255.0).view(b, 1).expand(b, 3)
    stats = NORMALIZATIONS[pre.normalization]
    if stats is not None:
        mean, std = torch.tensor(stats[0], device=device), torch.tensor(stats[1], device=device)
        a, g, c = a / std, g / std, (c - mean) / std
    return a.reshape(shape), g.reshape(shape), c.reshape(shape)


def _pixel_aligned_offset(width: int, height: int, pre: Preprocessing) -> int | None:
    """Where the evaluation transform of a ``width`` x ``height`` stored image is a plain crop: the offset of
    the central ``input_size`` square whose pixel centres it samples exactly (``crop_pct * side ==
    input_size`` and an even margin), else ``None``."""
    margin = width - pre.input_size
    if width != height or margin < 0 or margin % 2 or abs(pre.crop_pct * width - pre.input_size) > 1e-6:
        return None
    return margin // 2


def _sampling_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """``affine_grid(theta, (B, 3, size, size), align_corners=False)`` by broadcasting: the library
    version runs a (H*W x 3) @ (3 x 2) matmul per image, several times slower on the CPU."""
    import torch

    base = (torch.arange(size, dtype=torch.float32, device=theta.device) * 2 + 1) / size - 1  # pixel centres
    bx, by = base.view(1, 1, size), base.view(1, size, 1)
    t = theta.view(-1, 2, 3, 1, 1)
    grid_x = t[:, 0, 0] * bx + t[:, 0, 1] * by + t[:, 0, 2]
    grid_y = t[:, 1, 0] * bx + t[:, 1, 1] * by + t[:, 1, 2]
    return torch.stack([grid_x, grid_y], dim=-1)


def _shrinks_first(width: int, pre: Preprocessing) -> bool:
    """Whether the evaluation transform of a ``width``-px stored image first shrinks it (antialiased) to the
    crop's source side: ``grid_sample`` does not antialias, so inputs over 1.5 x that side would alias."""
    return width > 1.5 * pre.input_size / pre.crop_pct


def _check_images(images, name: str = "images") -> None:
    if str(images.dtype) not in ("uint8", "torch.uint8") or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (B, S, S, 3) uint8 RGB {name}, got {tuple(images.shape)} {images.dtype}")


def _eval_resample_matrix(stored: int, pre: Preprocessing) -> np.ndarray:
    """``(input_size, stored)`` float32: the bilinear weights with which the evaluation transform's
    ``grid_sample`` (``align_corners=False``, reflection padding) reads one axis of a ``stored``-px square. The
    evaluation grid only scales (:func:`_eval_theta`), so the 2-D sampling is this matrix applied to rows and
    to columns. The positions are computed in float32 as torch computes them, so the weights are its weights."""
    n = pre.input_size
    base = (np.arange(n, dtype=np.float32) * np.float32(2) + np.float32(1)) / np.float32(n) - np.float32(1)
    u = _eval_theta(pre)[0, 0] * base  # normalised stored coordinates of the output pixel centres
    ix = ((u + np.float32(1)) * np.float32(stored) - np.float32(1)) / np.float32(2)
    # crop_pct <= 1 keeps every position inside (-0.5, stored - 0.5), where torch's reflection padding leaves
    # it as it is; only its clip to the outer pixel centres acts
    ix = np.clip(ix, 0, stored - 1)
    left = np.floor(ix)
    frac = (ix - left).astype(np.float32)
    left = left.astype(int)
    matrix = np.zeros((n, stored), np.float32)
    rows = np.arange(n)
    matrix[rows, left] += np.float32(1) - frac
    inside = left + 1 < stored  # a neighbour past the edge has weight 0 (frac is 0 there after the clip)
    matrix[rows[inside], left[inside] + 1] += frac[inside]
    return matrix


def prepare_eval_batch(images: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """``(B, S, S, 3) uint8 RGB`` NumPy → ``(B, 3, input_size, input_size) float32``: the evaluation transform
    of :func:`prepare_batch`, the same values, without torch: a plain crop (:func:`_pixel_aligned_offset`) is
    sliced, a resampled one is two matrix products (:func:`_eval_resample_matrix`). Only a stored image so
    large that :func:`prepare_batch` would shrink it first (antialiased) goes through torch."""
    _check_images(images)
    height, width = images.shape[1:3]
    scale, shift = _eval_colour(pre)
    offset = _pixel_aligned_offset(width, height, pre)
    if offset is not None:
        side = pre.input_size
        crop = images[:, offset:offset + side, offset:offset + side, :].transpose(0, 3, 1, 2)
        out = crop.astype(np.float32, order="C")  # (B, 3, side, side)
    elif width == height and not _shrinks_first(width, pre):
        matrix = _eval_resample_matrix(width, pre)  # (n, S)
        x = images.transpose(0, 3, 1, 2).astype(np.float32)  # (B, 3, S, S)
        out = np.ascontiguousarray(matrix @ x @ matrix.T)  # (B, 3, n, n): rows, then columns
    else:
        import torch

        return prepare_batch(torch.from_numpy(np.ascontiguousarray(images)), pre).numpy()
    out *= scale[:, None, None]
    out += shift[:, None, None]
    return out


def prepare_batch(images: torch.Tensor, pre: Preprocessing, augment: Augmentation | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, S, S, 3) uint8 RGB`` → ``(B, 3, input_size, input_size) float32``, normalised.

    ``augment=None`` gives the deterministic evaluation transform.
    """
    import torch
    import torch.nn.functional as F

    _check_images(images)
    b, _, w, _ = images.shape
    if augment is None and _pixel_aligned_offset(w, images.shape[1], pre) is not None:
        # The evaluation transform samples the stored pixels' own centres (the bundled model: the central
        # 150 of 160 px): the same values as grid_sample's, without a sampling grid; 1-2.7 ms a face less.
        # One implementation, in NumPy (zero-copy on the CPU).
        return torch.from_numpy(prepare_eval_batch(images.cpu().numpy(), pre)).to(images.device)
    a, g, c = _colour_coefficients(images, pre, augment, generator)
    x = images.permute(0, 3, 1, 2).float()  # (B, 3, S, S) values 0..255
    if _shrinks_first(w, pre):
        side = round(pre.input_size / pre.crop_pct)
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    grid = _sampling_grid(_affine(b, pre, augment, generator).to(images.device), pre.input_size)
    # Reflection padding: a rotated or shifted crop never shows black corners.
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # Colour and normalisation after resampling (both are linear, so the order does not matter).
    if augment is None:
        return x.mul_(a).add_(c)
    grey = (x[:, 0:1] * 0.299).add_(x[:, 1:2], alpha=0.587).add_(x[:, 2:3], alpha=0.114)  # (B, 1, H, W)
    return torch.addcmul(c, grey, g).addcmul_(x, a)  # a*x + g*grey + c, in two passes


def images_to_batch(images: list, pre: Preprocessing) -> torch.Tensor:
    """Face crops (PIL images or ``(H, W[, 3|4])`` arrays, **RGB**) → evaluation batch
    ``(B, 3, input_size, input_size)``, resized exactly as ingest resized the training images."""
    import torch

    stored = np.stack([square_resize(to_rgb_uint8(im), pre.stored_size) for im in images])
    return prepare_batch(torch.from_numpy(stored), pre)


def input_to_stored(points: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Points ``(N, 2)`` in model-input pixels → the pixels of the stored square they were sampled from by
    the evaluation transform of :func:`prepare_batch` (its own matrix, so the two cannot drift apart)."""
    theta = _eval_theta(pre).astype(np.float64)  # (2, 3): normalised input → normalised stored
    u = 2 * np.asarray(points, np.float64) / pre.input_size - 1  # grid_sample, align_corners=False
    return ((u @ theta[:, :2].T + theta[:, 2]) + 1) * pre.stored_size / 2
