"""Image decoding, square resizing and hashing, shared by ingest and prediction.

Everything that leaves this module is **RGB**, ``uint8``, shape ``(H, W, 3)``. OpenCV decodes (it is
2-3x faster than Pillow here); Pillow only reads headers, to refuse decompression bombs before decoding.
``IMAGE_SUFFIXES``: the file suffixes read as images wherever a folder is searched (ingest, predict).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings

# OpenCV refuses images over this many pixels *before* allocating them (decompression-bomb guard); the
# variable is read when cv2 first decodes, so set it before cv2 is imported. Same value as MAX_IMAGE_PIXELS.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "64000000")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

__all__ = [
    "ImageDecodeError",
    "decode_image",
    "to_rgb_uint8",
    "square_resize",
    "content_hash",
    "perceptual_hash",
    "RESIZE_METHOD",
    "MAX_IMAGE_PIXELS",
    "IMAGE_SUFFIXES",
]

from .filetypes import IMAGE_SUFFIXES  # noqa: E402  (re-exported: one list, in a module free of heavy imports)

MAX_IMAGE_PIXELS = 64_000_000
"""Images with more pixels than this are refused (decompression-bomb guard)."""

RESIZE_METHOD = "center square crop, cv2.INTER_AREA"
"""How :func:`square_resize` shrinks an image; stored with every data set and checkpoint."""

cv2.setNumThreads(1)  # we parallelise across images (processes); OpenCV's own threads would oversubscribe


class ImageDecodeError(ValueError):
    """A file that is not a readable image; ``reason`` says why, ``name`` which file."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def _diagnose(data: bytes, name: str) -> None:
    """Raise the most precise :class:`ImageDecodeError` for data that must not be decoded: empty, not an
    image, too many pixels (read from the header), a truncated JPEG. Returns if nothing is found."""
    if len(data) == 0:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                width, height = im.size
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(name, f"image too large ({exc})") from exc
    except Image.DecompressionBombWarning as exc:
        raise ImageDecodeError(name, f"image too large ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - any header failure means "not an image"
        for magic, kind in ((b"\xff\xd8", "JPEG"), (b"\x89PNG", "PNG")):
            if data.startswith(magic):
                raise ImageDecodeError(name, f"truncated or corrupt {kind} (header unreadable)") from exc
        raise ImageDecodeError(name, "not an image (unrecognised format)") from exc
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(
            name, f"image too large: {width}x{height} pixels exceeds the limit of {MAX_IMAGE_PIXELS:,}"
        )
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-64:]:
        raise ImageDecodeError(name, "truncated JPEG (no end-of-image marker)")


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode image bytes (JPEG, PNG, BMP, WebP, TIFF; grayscale, RGBA, CMYK and 16-bit included).

    EXIF orientation is applied. Returns ``(H, W, 3)`` uint8 **RGB**.
    Raises :class:`ImageDecodeError` naming ``name`` for empty, truncated, oversized or non-image data.
    """
    # The header is read first (Pillow opens lazily: the size without a decoded pixel), so the pixel limit
    # holds before anything is allocated. OpenCV's own guard (OPENCV_IO_MAX_IMAGE_PIXELS, above) only holds
    # if it was set before cv2 was first imported, which a library cannot promise: a 20000 x 20000 PNG
    # of 389 KB took 3.1 GB when cv2 came first. The header costs ~2 % of a 200 px JPEG's decode.
    _diagnose(data, name)
    # IMREAD_COLOR: 3-channel 8-bit output (drops alpha, expands grey, converts CMYK, scales 16-bit)
    # and applies EXIF orientation; OpenCV decodes 2-3x faster than Pillow.
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # OpenCV's own size guard raises rather than return None
        bgr = None
    if bgr is None:
        raise ImageDecodeError(name, "corrupt image (decoder failed)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def to_rgb_uint8(image: np.ndarray | Image.Image) -> np.ndarray:
    """A PIL image (EXIF orientation applied; 16-bit and float grey scaled, not clipped) or an array
    (``(H, W)`` grey, ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA; uint8/uint16/float in [0, 1]) as
    ``(H, W, 3)`` uint8 RGB."""
    if isinstance(image, Image.Image):
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # Pillow's convert("RGB") would clip these
            return to_rgb_uint8(np.clip(np.asarray(image), 0, 65535).astype(np.uint16))
        if image.mode == "F":
            return to_rgb_uint8(np.asarray(image) / max(1.0, float(np.asarray(image).max())))
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype == np.uint16:
        arr = (arr / 257.0).round().astype(np.uint8)
    elif arr.dtype.kind == "f":
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ValueError(f"image array must be uint8, uint16 or float, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    return np.ascontiguousarray(arr[:, :, :3])


def square_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Center-crop ``(H, W, 3)`` to a square, then resize to ``(size, size, 3)`` with area interpolation."""
    h, w = rgb.shape[:2]
    if h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        rgb = rgb[top : top + side, left : left + side]
    if rgb.shape[0] == size:
        return np.ascontiguousarray(rgb)
    interp = cv2.INTER_AREA if rgb.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def content_hash(data: bytes) -> str:
    """SHA-1 hex digest of the file bytes: equal for byte-identical files."""
    return hashlib.sha1(data).hexdigest()


def perceptual_hash(rgb: np.ndarray) -> int:
    """64-bit DCT perceptual hash (pHash) of an RGB image, as an unsigned int.

    Written here (12 lines) rather than taken from ``imagehash`` to avoid a Pillow round trip per image:
    grey 32x32 → DCT → top-left 8x8 block → bit set where a coefficient exceeds the block's median.
    Visually near-identical images (re-encoded, resized, slightly shifted) differ in few bits.
    """
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low)
    return int(np.packbits(bits).view(">u8")[0])
