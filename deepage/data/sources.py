"""Where images come from: a folder, a ``.tar``/``.tar.gz`` archive or a ``.zip``; labels from file names
(a named :data:`LABEL_FORMATS` entry: UTKFace's or FG-NET's) or from a CSV.

Sources yield :class:`Entry` objects in a fixed order (sorted for folders and zips, archive order for
tars), so that an interrupted ingest can skip exactly the entries it already wrote. A file larger than
the per-file cap is yielded without its bytes (``skip_reason`` says why), judged from its declared size
before anything is read, so a small archive holding a huge member cannot fill the memory.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import lzma
import re
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..filetypes import IMAGE_SUFFIXES  # one list for ingest and predict; no heavy imports

__all__ = ["Entry", "Labels", "parse_utkface_name", "parse_fgnet_name", "parse_name", "LABEL_FORMATS",
           "iter_entries", "check_source", "IMAGE_SUFFIXES", "LabelParseError", "MAX_FILE_MB", "UNKNOWN"]

MAX_VALID_AGE = 120
UNKNOWN = -1
"""The gender / race code stored where the source does not say (FG-NET, a CSV without those columns)."""
MAX_FILE_MB = 64.0
"""Default per-file cap (declared size): UTKFace chips are ~30 KB and a 24-megapixel JPEG ~15 MB."""


class LabelParseError(ValueError):
    """The labels of one file could not be read (bad name, missing CSV row, impossible age)."""


@dataclass(frozen=True)
class Labels:
    """Per-image labels; ``-1`` where unknown. UTKFace codes: gender 0 male, 1 female;
    race 0 White, 1 Black, 2 Asian, 3 Indian, 4 Others."""

    age: int
    gender: int = UNKNOWN
    race: int = UNKNOWN


@dataclass(frozen=True)
class Entry:
    """One candidate image: its name inside the source, its bytes, and labels if known up front (CSV).
    ``skip_reason``: set (and ``data`` empty) when the file was refused without being read."""

    name: str
    data: bytes
    labels: Labels | None = None
    skip_reason: str | None = None


# UTKFace: age_gender_race_datetime.jpg.chip.jpg. Irregular names seen in the real archive:
# "24_0_1_20170116220224657 .jpg.chip.jpg" (space), "55_0_0_20170116232725357jpg.chip.jpg" (no dot),
# "39_1_20170116174525125.jpg.chip.jpg" (race missing). The date field is long, which tells a
# missing race apart from a present one.
_UTK_NAME = re.compile(r"^(?P<age>\d{1,3})_(?P<gender>\d+)_(?:(?P<race>\d{1,2})_)?(?P<date>\d{6,})")


def parse_utkface_name(name: str) -> Labels:
    """Labels from a UTKFace file name (directories ignored).

    >>> parse_utkface_name("UTKFace/39_1_20170116174525125.jpg.chip.jpg")
    Labels(age=39, gender=1, race=-1)
    """
    base = name.rsplit("/", 1)[-1]
    match = _UTK_NAME.match(base)
    if match is None:
        raise LabelParseError("file name does not follow age_gender_race_datetime.jpg.chip.jpg")
    age = int(match["age"])
    if not 0 <= age <= MAX_VALID_AGE:
        raise LabelParseError(f"age {age} outside 0-{MAX_VALID_AGE}")
    gender = int(match["gender"])
    race = int(match["race"]) if match["race"] is not None else -1
    return Labels(age=age, gender=gender if gender in (0, 1) else -1, race=race if 0 <= race <= 4 else -1)


# FG-NET: SSSAaa[x].JPG, subject SSS, age aa, an optional letter for a second photo at that age:
# "001A02.JPG" (subject 1, age 2), "001A43a.JPG" (subject 1, age 43).
_FGNET_NAME = re.compile(r"^(?P<subject>\d{3})A(?P<age>\d{2})(?P<variant>[a-z])?\.[a-z]+$", re.IGNORECASE)


def parse_fgnet_name(name: str) -> Labels:
    """Labels from an FG-NET file name (directories ignored); FG-NET names carry no gender or race, so
    both are :data:`UNKNOWN` (-1).

    >>> parse_fgnet_name("FGNET/images/001A43a.JPG")
    Labels(age=43, gender=-1, race=-1)
    """
    match = _FGNET_NAME.match(name.rsplit("/", 1)[-1])
    if match is None:
        raise LabelParseError("file name does not follow FG-NET's SSSAaa.JPG (subject, 'A', age)")
    return Labels(age=int(match["age"]))


LABEL_FORMATS: dict[str, Callable[[str], Labels]] = {"utkface": parse_utkface_name, "fgnet": parse_fgnet_name}
"""How labels are read from file names, by ``deepage ingest --format`` name."""


def parse_name(name: str, label_format: str = "utkface") -> Labels:
    """Labels from a file name in one of :data:`LABEL_FORMATS`."""
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"unknown label format {label_format!r}; choose one of {sorted(LABEL_FORMATS)}")
    return LABEL_FORMATS[label_format](name)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def read_labels_csv(path: Path) -> dict[str, Labels]:
    """``path,age[,gender,race]`` rows, keyed by the normalised relative path."""
    out: dict[str, Labels] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "age"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: labels CSV needs columns path,age[,gender,race]; missing {sorted(missing)}")
        for line_no, row in enumerate(reader, start=2):
            try:
                labels = Labels(
                    age=int(float(row["age"])),
                    gender=int(row.get("gender") or -1),
                    race=int(row.get("race") or -1),
                )
            except ValueError as exc:
                raise ValueError(f"{path}, line {line_no}: cannot read labels from {row}") from exc
            out[row["path"].strip().replace("\\", "/")] = labels
    return out


def check_source(source: Path) -> None:
    """Refuse a source that is not a folder, tar(.gz) or zip before anything is written."""
    source = Path(source)
    if source.is_dir() or zipfile.is_zipfile(source) or (source.is_file() and tarfile.is_tarfile(source)):
        return
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    raise ValueError(f"{source}: not a folder, tar(.gz) or zip archive")


def _too_large(size: int, max_bytes: int) -> str | None:
    if size > max_bytes:
        return f"file of {size / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB cap (--max-file-mb)"
    return None


def _read_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> tuple[bytes, str | None]:
    """The member's bytes, or a reason to skip it. zipfile stops at the declared size and checks the CRC,
    so a member whose header understates its size cannot be read past the cap either."""
    reason = _too_large(info.file_size, max_bytes)
    if reason:
        return b"", reason
    try:
        with zf.open(info) as fh:
            return fh.read(max_bytes + 1), None
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as exc:
        return b"", f"unreadable archive member: {exc}"


def _decompressed(source: Path) -> BinaryIO:
    """The archive's bytes, decompressed as they are read. tarfile's own "r|gz" inflates a whole input
    buffer at once (up to ~1000x its size for a run of zeros); these readers return what is asked for."""
    with open(source, "rb") as fh:
        magic = fh.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(source, "rb")
    if magic[:3] == b"BZh":
        return bz2.open(source, "rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.open(source, "rb")
    return open(source, "rb")  # noqa: SIM115 - closed by the caller's with-block


def iter_entries(source: Path, labels_csv: Path | None = None, max_file_mb: float = MAX_FILE_MB) -> Iterator[Entry]:
    """Every image-named file of ``source`` (folder, tar, tar.gz or zip), in a fixed order; files over
    ``max_file_mb`` (declared size) come without their bytes and with a ``skip_reason``."""
    source = Path(source)
    check_source(source)
    table = read_labels_csv(labels_csv) if labels_csv is not None else None
    max_bytes = int(max_file_mb * 2**20)

    def entry(name: str, read: Callable[[], bytes], size: int, reason: str | None = None) -> Entry:
        reason = reason or _too_large(size, max_bytes)
        labels = None if table is None else table.get(name, Labels(age=-999))  # -999: no CSV row, reported later
        return Entry(name, b"" if reason else read(), labels, reason)

    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file() and _is_image_name(p.name)):
            yield entry(path.relative_to(source).as_posix(), path.read_bytes, path.stat().st_size)
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if not info.is_dir() and _is_image_name(info.filename):
                    data, reason = _read_zip_member(zf, info, max_bytes)
                    yield entry(info.filename, lambda data=data: data, len(data), reason)
    else:
        # "r|" streams the archive: memory stays flat and a .tar.gz is read once, front to back; a member
        # that is skipped unread is passed over in small reads, never held.
        with _decompressed(source) as raw, tarfile.open(fileobj=raw, mode="r|") as tf:
            for member in tf:
                if member.isfile() and _is_image_name(member.name):
                    def read(member: tarfile.TarInfo = member) -> bytes:
                        fh = tf.extractfile(member)
                        return fh.read() if fh is not None else b""

                    yield entry(member.name, read, member.size)
