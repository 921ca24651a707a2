"""From one input image to the model's face crops: read and check the image, find and align its faces
(or take the whole image as one face), and resize each crop to the stored size, as ingest stored the
training images.

This is the part of prediction that runs once per image on the CPU (decoding and the HOG detector are
most of its cost), so :class:`~deepage.inference.predictor.Predictor` can run it in worker processes
(``workers=N``). It imports no torch: a worker starts in well under a second.

Everything here is **RGB** ``uint8``.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .faces import FaceAligner
from .imageio import ImageDecodeError, decode_image, read_image_file, square_resize, to_rgb_uint8

__all__ = ["load_rgb", "check_image_size", "Crop", "PreparedImage", "CropMaker", "MIN_IMAGE_SIDE",
           "IDENTITY", "init_worker", "worker_prepare_many"]

MIN_IMAGE_SIDE = 16
"""Images with a side shorter than this are refused: no face fits, and the detector's resizing of a
1 x 20000 strip fails."""

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def load_rgb(image, name: str | None = None) -> tuple[np.ndarray, str]:
    """Any accepted input → ``((H, W, 3) uint8 RGB, source name)``.

    Accepts a path (``str``/``Path``: a regular file of at most :data:`~deepage.imageio.MAX_FILE_BYTES`),
    encoded ``bytes``, a PIL image (EXIF orientation applied) or an array ``(H, W)``, ``(H, W, 3)`` **RGB** or
    ``(H, W, 4)`` RGBA (uint8, uint16 or float in [0, 1]).
    Raises :class:`ImageDecodeError` (naming the file) for unreadable, oversized or non-image data, and for a
    path that is not a regular file (a FIFO, a device, a folder), without blocking on it.
    """
    if isinstance(image, (str, Path)):
        name = name or str(image)
        return decode_image(read_image_file(image, name=name), name), name  # a regular file, at most 64 MiB
    if isinstance(image, (bytes, bytearray, memoryview)):
        name = name or "<bytes>"
        return decode_image(bytes(image), name), name
    if isinstance(image, Image.Image):
        return to_rgb_uint8(image), name or "<PIL image>"
    if isinstance(image, np.ndarray):
        name = name or "<array>"
        try:
            return to_rgb_uint8(image), name
        except ValueError as exc:
            raise ImageDecodeError(name, str(exc)) from exc
    raise ImageDecodeError(name or "<input>", f"unsupported input type {type(image).__name__} (give a path, "
                                              "bytes, a PIL image or an (H, W[, 3|4]) RGB array)")


def check_image_size(rgb: np.ndarray, name: str) -> None:
    """Refuse an image too small or too thin to hold a face (:data:`MIN_IMAGE_SIDE`)."""
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ImageDecodeError(name, f"image too small or too thin: {w}x{h} pixels (each side must be at "
                                     f"least {MIN_IMAGE_SIDE})")


@dataclass
class Crop:
    """One face crop. ``stored``: ``(S, S, 3)`` uint8 RGB, the crop square-resized to the model's stored
    size; ``crop_shape``: ``(h, w)`` of the crop before that; ``to_image``: ``(2, 3)`` affine from crop
    pixels to image pixels; ``box``: ``(x0, y0, x1, y1)`` image pixels; ``score``: the detector's (``None``
    without detection)."""

    stored: np.ndarray = field(repr=False)
    crop_shape: tuple[int, int]
    to_image: np.ndarray = field(repr=False)
    box: tuple[int, int, int, int]
    score: float | None


@dataclass
class PreparedImage:
    """One input image made ready for the model: its ``source`` name, ``width`` x ``height`` (0 when it
    could not be read), its face ``crops`` (largest first) or the ``error`` that stopped it."""

    source: str
    width: int
    height: int
    crops: list[Crop]
    error: str | None = None


class CropMaker:
    """``CropMaker(aligner, stored_size)(image, detect)`` → :class:`PreparedImage`; never raises for a bad
    image (the reason goes into ``error``). Picklable, for worker processes."""

    def __init__(self, aligner: FaceAligner, stored_size: int) -> None:
        self.aligner = aligner
        self.stored_size = int(stored_size)

    def _crops(self, rgb: np.ndarray, detect: bool) -> list[Crop]:
        if not detect:
            h, w = rgb.shape[:2]
            return [Crop(square_resize(rgb, self.stored_size), (h, w), IDENTITY, (0, 0, w, h), None)]
        return [Crop(square_resize(f.chip, self.stored_size), f.chip.shape[:2], f.chip_to_image, f.box, f.score)
                for f in self.aligner.detect(rgb)]

    def __call__(self, image, detect: bool = True) -> PreparedImage:
        try:
            rgb, name = load_rgb(image)
            check_image_size(rgb, name)
            crops = self._crops(rgb, detect)
        except ImageDecodeError as exc:
            return PreparedImage(exc.name, 0, 0, [], error=exc.reason)
        except Exception as exc:  # noqa: BLE001 - one odd file (a decoder's own error) must not stop the rest
            source = str(image) if isinstance(image, (str, Path)) else f"<{type(image).__name__}>"
            return PreparedImage(source, 0, 0, [], error=f"unexpected error: {type(exc).__name__}: {exc}")
        return PreparedImage(name, int(rgb.shape[1]), int(rgb.shape[0]), crops)


# ---- worker processes (they import this module, not torch) ------------------------------------------------
_WORKER_MAKER: CropMaker | None = None


def init_worker(maker: CropMaker) -> None:
    """Pool initializer: the worker's :class:`CropMaker`, received once (its aligner builds dlib's objects
    on first use and keeps them)."""
    global _WORKER_MAKER
    _WORKER_MAKER = maker
    # Ctrl-C reaches the whole process group: the parent stops the run and closes the pool; workers that
    # raised KeyboardInterrupt too would each print a traceback and break the pool under it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_prepare_many(images: list, detect: bool = True) -> list[PreparedImage]:
    """A pool task: a :class:`PreparedImage` for each input, by the maker :func:`init_worker` installed.
    Several inputs per task: each task costs the parent process ~0.3 ms of queue and pickling work."""
    if _WORKER_MAKER is None:
        raise RuntimeError("worker_prepare_many runs in a pool started with initializer=init_worker")
    return [_WORKER_MAKER(image, detect) for image in images]
