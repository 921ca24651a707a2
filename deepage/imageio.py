"""Image decoding, square resizing and hashing, shared by ingest and prediction.

Everything that leaves this module is **RGB**, ``uint8``, shape ``(H, W, 3)``. OpenCV decodes (it is
2-3x faster than Pillow here); Pillow only reads headers, to refuse decompression bombs before decoding.
``IMAGE_SUFFIXES``: the file suffixes read as images wherever a folder is searched (ingest, predict).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import struct
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# OpenCV refuses images over this many pixels *before* allocating them (decompression-bomb guard); the
# variable is read when cv2 first decodes, so set it before cv2 is imported. Same value as MAX_IMAGE_PIXELS.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "64000000")
# OpenCV's own "[ WARN ]" lines about a damaged file: the reason reaches the caller in the error instead.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

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
    "MAX_JPEG_SCANS",
    "MAX_FILE_BYTES",
    "IMAGE_SUFFIXES",
    "read_image_file",
]

from .filetypes import IMAGE_SUFFIXES  # noqa: E402  (re-exported: one list, in a module free of heavy imports)

MAX_IMAGE_PIXELS = 64_000_000
"""Images with more pixels than this are refused (decompression-bomb guard)."""

MAX_JPEG_SCANS = 256
"""JPEGs with more scans (SOS markers) than this are refused before decoding: each scan is a pass over the
whole image, so 500,000 empty scans kept libjpeg busy for minutes (libjpeg-turbo's own scan limit is
500). A progressive JPEG of a camera or an encoder has about 10; 1,000 scans of 1 megapixel take ~0.1 s."""

MAX_FILE_BYTES = 64 * 2**20
"""Largest image file read from a path (64 MiB, as ingest's ``--max-file-mb``): judged from its size
before reading, and no more than this is read."""

log = logging.getLogger(__name__)

RESIZE_METHOD = "center square crop, cv2.INTER_AREA"
"""How :func:`square_resize` shrinks an image; stored with every data set and checkpoint."""

cv2.setNumThreads(1)  # we parallelise across images (processes); OpenCV's own threads would oversubscribe


class ImageDecodeError(ValueError):
    """A file that is not a readable image; ``reason`` says why, ``name`` which file."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


_MAGIC = ((b"\xff\xd8", "JPEG"), (b"\x89PNG", "PNG"), (b"RIFF", "WebP"), (b"II*\0", "TIFF"), (b"MM\0*", "TIFF"),
          (b"BM", "BMP"), (b"GIF8", "GIF"))
"""Leading bytes → the format a file claims to be (for the message when its header cannot be read)."""

_OPENCV_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "DIB", "WEBP", "TIFF", "PPM", "GIF", "JPEG2000", "SUN", "HDR"}
"""Pillow's names of the formats OpenCV decodes: a file in another one (ICO, PCX, PSD, TGA, ...) that
OpenCV refuses is "unsupported", not "corrupt"."""


def _too_large(exc: Exception) -> str:
    """Pillow's decompression-bomb message restated with deepage's own limit (Pillow's is another)."""
    pixels = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(pixels[1]):,} pixels" if pixels else "its pixel count"
    return f"image too large: {size} exceeds the limit of {MAX_IMAGE_PIXELS:,}"


def _check_png_chunks(data: bytes, name: str) -> None:
    """Refuse a PNG whose chunk lengths run past the end of the file: OpenCV allocates each chunk's declared
    length before reading it (a 2 KB file claiming a 2 GB IDAT took 2.15 GB)."""
    pos = 8
    while pos + 8 <= len(data):
        (length,), kind = struct.unpack_from(">I", data, pos), data[pos + 4 : pos + 8]
        left = len(data) - pos - 12
        if length > left:
            what = kind.decode("latin-1") if kind.isalpha() else repr(kind)
            raise ImageDecodeError(name, f"truncated or corrupt PNG: chunk {what} at byte {pos} declares "
                                         f"{length:,} bytes, the file holds {max(left, 0):,} more")
        pos += 12 + length
        if kind == b"IEND":
            return


def _check_before_decoding(data: bytes, name: str, kind: str) -> None:
    """The checks on the raw bytes of a file whose header was read: JPEG scans and end marker, PNG chunks."""
    if kind in ("JPEG", "MPO"):
        scans = data.count(b"\xff\xda")  # entropy-coded data stuffs every 0xFF: only real SOS markers count
        if scans > MAX_JPEG_SCANS:
            raise ImageDecodeError(name, f"JPEG with {scans:,} scans exceeds the limit of {MAX_JPEG_SCANS} "
                                         "(a decoder-exhaustion file)")
        if b"\xff\xd9" not in data[-64:]:
            raise ImageDecodeError(name, "truncated JPEG (no end-of-image marker)")
    elif kind == "PNG":
        _check_png_chunks(data, name)


def _diagnose(data: bytes, name: str) -> str:
    """Raise the most precise :class:`ImageDecodeError` for data that must not be decoded: empty, not an
    image, too many pixels (read from the header), too many JPEG scans, a truncated JPEG, PNG chunks longer
    than the file. Returns the format's name (Pillow's: ``"JPEG"``, ``"PNG"``, ...) if nothing is found."""
    if len(data) == 0:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd headers (EXIF, ICC): not the caller's business
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                width, height = im.size
                kind = str(im.format)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(name, _too_large(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - any header failure means "not an image"
        for magic, claimed in _MAGIC:
            if data.startswith(magic) and (claimed != "WebP" or data[8:12] == b"WEBP"):
                raise ImageDecodeError(name, f"truncated or corrupt {claimed} (header unreadable)") from exc
        raise ImageDecodeError(name, "not an image (unrecognised format)") from exc
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(
            name, f"image too large: {width}x{height} pixels exceeds the limit of {MAX_IMAGE_PIXELS:,}"
        )
    _check_before_decoding(data, name, kind)
    return kind


# ---- what C decoders print ----------------------------------------------------------------------------
_SINK_LOCK = threading.Lock()
_SINK: tuple[int, int] | None = None  # (process id, file descriptor of a temporary file)
_LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")


def _sink() -> int:
    """This process's temporary file for captured decoder output (a forked child makes its own)."""
    global _SINK
    if _SINK is None or _SINK[0] != os.getpid():
        handle, path = tempfile.mkstemp(prefix="deepage-decoder-")
        os.unlink(path)
        _SINK = (os.getpid(), handle)
    return _SINK[1]


@contextmanager
def _decoder_output(lines: list[str]) -> Iterator[None]:
    """Collect into ``lines`` what libjpeg, libpng, libtiff and OpenCV write to standard error (file
    descriptor 2) inside the block, instead of letting ~100 unnamed lines reach the terminal or the server
    log. One decode at a time redirects (a decode that runs beside it is not held up: what it says lands
    with the first one's lines); a log line another thread writes meanwhile is passed on unchanged. Without
    a usable descriptor 2 the block runs uncaptured."""
    if not _SINK_LOCK.acquire(blocking=False):
        yield
        return
    try:
        try:
            sink, saved = _sink(), os.dup(2)
        except OSError:
            yield
            return
        try:
            os.dup2(sink, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            size = os.fstat(sink).st_size
            if size:
                os.lseek(sink, 0, os.SEEK_SET)
                text = os.read(sink, min(size, 1 << 16)).decode("utf-8", "replace")
                os.ftruncate(sink, 0)
                os.lseek(sink, 0, os.SEEK_SET)
                for line in filter(None, (ln.strip() for ln in text.splitlines())):
                    if _LOG_LINE.match(line):
                        os.write(2, (line + "\n").encode())
                    elif line not in lines:
                        lines.append(line)
    finally:
        _SINK_LOCK.release()


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode image bytes (JPEG, PNG, BMP, WebP, TIFF; grayscale, RGBA, CMYK and 16-bit included).

    EXIF orientation is applied. Returns ``(H, W, 3)`` uint8 **RGB**.
    Raises :class:`ImageDecodeError` naming ``name`` for empty, truncated, oversized or non-image data, and
    for formats OpenCV does not read (ICO, PCX, PSD, ...: "unsupported format"). What the C decoders say
    about a damaged file goes into that error, or, for a file they decoded anyway, into one ``WARNING`` of
    the ``deepage.imageio`` logger naming the file; never raw onto standard error.
    """
    # The header is read first (Pillow opens lazily: the size without a decoded pixel), so the pixel limit
    # holds before anything is allocated. OpenCV's own guard (OPENCV_IO_MAX_IMAGE_PIXELS, above) only holds
    # if it was set before cv2 was first imported, which a library cannot promise: a 20000 x 20000 PNG
    # of 389 KB took 3.1 GB when cv2 came first. The header costs ~2 % of a 200 px JPEG's decode.
    kind = _diagnose(data, name)
    # IMREAD_COLOR: 3-channel 8-bit output (drops alpha, expands grey, converts CMYK, scales 16-bit)
    # and applies EXIF orientation; OpenCV decodes 2-3x faster than Pillow.
    said: list[str] = []
    with _decoder_output(said):
        try:
            bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:  # OpenCV's own size guard raises rather than return None
            bgr = None
    detail = f": {'; '.join(said)[:300]}" if said else ""
    if bgr is None:
        if kind not in _OPENCV_FORMATS:
            raise ImageDecodeError(name, f"unsupported format ({kind}; deepage reads JPEG, PNG, BMP, WebP "
                                         "and TIFF)")
        raise ImageDecodeError(name, f"corrupt image (decoder failed{detail})")
    if said:
        log.warning("%s: decoded despite damage (decoder said%s)", name, detail)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_image_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES, name: str | None = None) -> bytes:
    """The bytes of the image file ``path``: a regular file only (a FIFO, a device or a folder is refused
    without blocking on it), at most ``max_bytes`` (judged from its size before reading, and no more than
    that read, whatever the file does meanwhile). Raises :class:`ImageDecodeError` naming the file."""
    name = name or str(path)
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer; a regular file ignores it.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ImageDecodeError(name, "file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError(name, "not a regular file (a folder)") from None
    except OSError as exc:
        raise ImageDecodeError(name, f"cannot read ({exc.strerror or exc})") from exc
    _check_regular(fd, name, max_bytes)  # else closes fd and raises the reason
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise ImageDecodeError(name, f"cannot read ({exc.strerror or exc})") from exc
    if len(data) > max_bytes:  # it grew after the size was read
        raise ImageDecodeError(name, f"file too large: over the limit of {_mib(max_bytes)}")
    return data


def _check_regular(fd: int, name: str, max_bytes: int) -> None:
    """Return for a regular file of at most ``max_bytes``; else close ``fd`` and raise the reason."""
    mode = os.fstat(fd)
    reason = None
    if stat.S_ISDIR(mode.st_mode):
        reason = "not a regular file (a folder)"
    elif stat.S_ISFIFO(mode.st_mode):
        reason = "not a regular file (a FIFO)"
    elif stat.S_ISCHR(mode.st_mode) or stat.S_ISBLK(mode.st_mode):
        reason = "not a regular file (a device)"
    elif not stat.S_ISREG(mode.st_mode):
        reason = "not a regular file (a socket or other special file)"
    elif mode.st_size > max_bytes:
        reason = f"file too large: {_mib(mode.st_size)} exceeds the limit of {_mib(max_bytes)}"
    if reason is not None:
        os.close(fd)
        raise ImageDecodeError(name, reason)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


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
