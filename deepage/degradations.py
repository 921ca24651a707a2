"""What old and cheap photos do to a face: noise and grain, grey and sepia, colour casts, blur, low
resolution, JPEG artefacts — as named, measured degradations and as a training augmentation.

Two uses, one set of operations on ``(B, S, S, 3) uint8 RGB`` batches (stored images, before preprocessing):

* **measuring** (``deepage evaluate --degrade noise,grey,blur=2``): :func:`parse_degradations` reads the
  names and strengths, :func:`degrade` applies one to a whole split, deterministically for a seed;
* **training** (``photo_augment: true``): :func:`photo_augment` applies each operation to a random share
  of a batch (:class:`PhotoAugmentation`), seeded by the batch's generator like the geometric augmentation.

Strengths are in the stored image's pixels (a UTKFace chip ingested at 128 or 160 px): ``noise`` the
Gaussian σ in grey levels, ``blur`` the Gaussian σ in pixels, ``jpeg`` the quality, ``down`` the side the
image is shrunk to before being enlarged back, ``cast`` the largest per-channel gain change. Why by hand:
each is a few lines of OpenCV/NumPy, and no augmentation library works on these uint8 batches with
the project's seeded per-batch generators.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch

__all__ = ["DEGRADATIONS", "DEFAULT_DEGRADATIONS", "parse_degradations", "degrade", "PhotoAugmentation",
           "PHOTO_AUGMENTATION", "photo_augment"]

_SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    noisy = img.astype(np.float32) + rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)


def _grey(img: np.ndarray, _: float, __: np.random.Generator) -> np.ndarray:
    grey = (img.astype(np.float32) @ _LUMA + 0.5).clip(0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _sepia(img: np.ndarray, _: float, __: np.random.Generator) -> np.ndarray:
    return (img.astype(np.float32) @ _SEPIA.T + 0.5).clip(0, 255).astype(np.uint8)


def _cast(img: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    gains = 1.0 + rng.uniform(-amount, amount, 3).astype(np.float32)
    return (img.astype(np.float32) * gains + 0.5).clip(0, 255).astype(np.uint8)


def _blur(img: np.ndarray, sigma: float, _: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)


def _down(img: np.ndarray, side: float, _: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(4, round(side)), max(4, round(side * h / w))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _jpeg(img: np.ndarray, quality: float, _: np.random.Generator) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(round(quality))])
    if not ok:
        raise RuntimeError("JPEG re-encoding failed")
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]


Operation = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
DEGRADATIONS: dict[str, tuple[Operation, float]] = {
    "noise": (_noise, 12.0), "grey": (_grey, 1.0), "sepia": (_sepia, 1.0), "cast": (_cast, 0.15),
    "blur": (_blur, 2.0), "down": (_down, 50.0), "jpeg": (_jpeg, 15.0),
}
"""name → (operation on one ``(S, S, 3)`` uint8 image, default strength)."""
DEFAULT_DEGRADATIONS = "noise,grey,sepia,cast,blur,down,jpeg"


def parse_degradations(text: str) -> list[tuple[str, float]]:
    """``"noise,blur=1.5,jpeg=30"`` → ``[("noise", 12.0), ("blur", 1.5), ("jpeg", 30.0)]`` (default strengths
    where none is given); an unknown name or a strength that is not a positive number is an error naming it."""
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in DEGRADATIONS:
            raise ValueError(f"--degrade: unknown degradation {name!r}; choose from {', '.join(DEGRADATIONS)}")
        try:
            strength = float(value) if value else DEGRADATIONS[name][1]
        except ValueError:
            raise ValueError(f"--degrade: {item!r}: the strength must be a number") from None
        if strength <= 0:
            raise ValueError(f"--degrade: {item!r}: the strength must be positive")
        out.append((name, strength))
    if not out:
        raise ValueError(f"--degrade: name at least one of {', '.join(DEGRADATIONS)}")
    return out


def degrade(images: np.ndarray | torch.Tensor, name: str, strength: float, seed: int = 0) -> np.ndarray:
    """``(N, S, S, 3) uint8`` → the same images degraded by ``name`` at ``strength`` (deterministic per seed)."""
    operation = DEGRADATIONS[name][0]
    array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    rng = np.random.default_rng(seed)
    return np.stack([operation(np.ascontiguousarray(im), strength, rng) for im in array])


@dataclass(frozen=True)
class PhotoAugmentation:
    """For each operation, the share of training images it is applied to and the range its strength is drawn
    from (uniformly). Applied in a camera's order: resolution, blur, colour, noise, compression."""

    down: tuple[float, tuple[float, float]] = (0.15, (36.0, 96.0))
    blur: tuple[float, tuple[float, float]] = (0.15, (0.5, 2.0))
    grey: tuple[float, tuple[float, float]] = (0.12, (1.0, 1.0))
    sepia: tuple[float, tuple[float, float]] = (0.05, (1.0, 1.0))
    cast: tuple[float, tuple[float, float]] = (0.2, (0.05, 0.15))
    noise: tuple[float, tuple[float, float]] = (0.2, (3.0, 15.0))
    jpeg: tuple[float, tuple[float, float]] = (0.2, (15.0, 60.0))


PHOTO_AUGMENTATION = PhotoAugmentation()


def photo_augment(images: torch.Tensor, aug: PhotoAugmentation, generator: torch.Generator | None) -> torch.Tensor:
    """``(B, S, S, 3) uint8`` (CPU) → a copy in which each operation of ``aug`` touched its share of images.

    The draws come from ``generator`` (the batch's own), so a resumed run degrades the same images alike.
    """
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    out = images.cpu().numpy().copy()
    for name in ("down", "blur", "grey", "sepia", "cast", "noise", "jpeg"):
        share, (low, high) = getattr(aug, name)
        operation = DEGRADATIONS[name][0]
        for i in np.flatnonzero(rng.random(len(out)) < share):
            out[i] = operation(out[i], float(rng.uniform(low, high)), rng)
    return torch.from_numpy(out).to(images.device)
