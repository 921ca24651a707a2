"""Where images come from: a folder, a ``.tar``/``.tar.gz`` archive or a ``.zip``; labels from file names
(UTKFace) or from a CSV.

Sources yield :class:`Entry` objects in a fixed order (sorted for folders and zips, archive order for
tars), so that an interrupted ingest can skip exactly the entries it already wrote.
"""

from __future__ import annotations

import csv
import re
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..imageio import IMAGE_SUFFIXES  # one list for ingest and predict

__all__ = ["Entry", "Labels", "parse_utkface_name", "iter_entries", "IMAGE_SUFFIXES", "LabelParseError"]

MAX_VALID_AGE = 120


class LabelParseError(ValueError):
    """The labels of one file could not be read (bad name, missing CSV row, impossible age)."""


@dataclass(frozen=True)
class Labels:
    """Per-image labels; ``-1`` where unknown. UTKFace codes: gender 0 male, 1 female;
    race 0 White, 1 Black, 2 Asian, 3 Indian, 4 Others."""

    age: int
    gender: int = -1
    race: int = -1


@dataclass(frozen=True)
class Entry:
    """One candidate image: its name inside the source, its bytes, and labels if known up front (CSV)."""

    name: str
    data: bytes
    labels: Labels | None = None


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


def iter_entries(source: Path, labels_csv: Path | None = None) -> Iterator[Entry]:
    """Every image-named file of ``source`` (folder, tar, tar.gz or zip), in a fixed order."""
    source = Path(source)
    table = read_labels_csv(labels_csv) if labels_csv is not None else None

    def with_labels(name: str, data: bytes, rel: str) -> Entry:
        if table is None:
            return Entry(name, data)
        return Entry(name, data, table.get(rel, Labels(age=-999)))  # -999: no CSV row, reported later

    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file() and _is_image_name(p.name)):
            rel = path.relative_to(source).as_posix()
            yield with_labels(rel, path.read_bytes(), rel)
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if not info.is_dir() and _is_image_name(info.filename):
                    yield with_labels(info.filename, zf.read(info), info.filename)
    elif source.is_file() and tarfile.is_tarfile(source):
        # "r|*" streams the archive: memory stays flat and a .tar.gz is read once, front to back.
        with tarfile.open(source, "r|*") as tf:
            for member in tf:
                if member.isfile() and _is_image_name(member.name):
                    fh = tf.extractfile(member)
                    data = fh.read() if fh is not None else b""
                    yield with_labels(member.name, data, member.name)
    elif not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    else:
        raise ValueError(f"{source}: not a folder, tar(.gz) or zip archive")
