"""``deepage ingest``: stream face images into one HDF5 file that trains fast.

Layout of the output (``N`` images of ``S x S`` pixels)::

    images    (N, S, S, 3) uint8 RGB, one-image chunks, uncompressed (compression caps reads ~1.5k img/s)
    age       (N,) int16  years
    gender    (N,) int8   0 male, 1 female, -1 unknown
    race      (N,) int8   0-4 as UTKFace, -1 unknown
    filename  (N,) str    name inside the source
    sha1      (N,) S40    hash of the file bytes (exact duplicates)
    phash     (N,) uint64 perceptual hash (near duplicates)
    skipped/filename, skipped/reason   files that could not be ingested, and why
    attrs: source, size, color_order, resize_method, deepage_version, n_images, n_skipped, complete

Resumable: rows go to ``OUT.partial`` in blocks; after each block the file is flushed and a small
progress file (``OUT.partial.progress.json``) is replaced atomically. A re-run of the same command
truncates the partial file to the last recorded block and goes on from the next source entry, so the
result holds exactly the rows an uninterrupted run would. Only a finished file is renamed to ``OUT``;
a run that fails before its first block is written (a mistyped source, a bad labels CSV) leaves nothing.

Refused files are listed under ``skipped`` with the reason: undecodable, unlabelled, over the per-file
size cap (judged from the declared size, before reading), or a second file under a name already ingested
(archives can hold the same name twice; the first one is kept, and the reason says whether the bytes,
compared by SHA-1, are the same).
"""



from __future__ import annotations

import json
import mmap
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..faces import NoFaceError
from ..imageio import (
    IMAGE_SUFFIXES,
    RESIZE_METHOD,
    ImageDecodeError,
    content_hash,
    decode_image,
    perceptual_hash,
    square_resize,
)
from .h5file import open_h5
from .sources import (
    LABEL_FORMATS,
    MAX_FILE_MB,
    Entry,
    LabelParseError,
    check_source,
    iter_entries,
    parse_name,
    read_labels_csv,
)

__all__ = ["ingest", "IngestSummary", "process_entry", "read_summary", "BLOCK_SIZE"]

BLOCK_SIZE = 512
"""Entries per written block: the most an interrupted run can lose."""

_STR = h5py.string_dtype("utf-8")
_COLUMNS = ("images", "age", "gender", "race", "sha1", "phash", "filename")
_DEFAULT_SETTINGS = {"label_format": "utkface", "max_file_mb": MAX_FILE_MB}
"""Settings added after the first release: a partial file written without them used these values."""


@dataclass
class IngestSummary:
    """What an ingest run did. ``skipped`` lists ``(file name, reason)`` for every refused file."""

    output: Path
    n_entries: int = 0
    n_images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0
    already_done: bool = False

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    @property
    def duplicate_names(self) -> list[str]:
        """Names that stood more than once in the source (each later copy was skipped)."""
        return [name for name, reason in self.skipped if reason.startswith(_DUPLICATE)]


def process_entry(entry: Entry, size: int, align: Callable | None = None, label_format: str = "utkface") -> tuple:
    """Decode, label and hash one entry (runs in a worker process).

    Returns ``("ok", name, image (S, S, 3) uint8 RGB, age, gender, race, sha1, phash)`` or
    ``("skip", name, reason)``; never raises for a bad file.
    """
    if entry.skip_reason:
        return ("skip", entry.name, entry.skip_reason)
    try:
        labels = entry.labels if entry.labels is not None else parse_name(entry.name, label_format)
        if labels.age == -999:
            raise LabelParseError("no row for this file in the labels CSV")
        if not 0 <= labels.age <= 120:
            raise LabelParseError(f"age {labels.age} outside 0-120")
        rgb = decode_image(entry.data, entry.name)
        if align is not None:
            rgb = align(rgb)
        image = square_resize(rgb, size)
        return ("ok", entry.name, image, labels.age, labels.gender, labels.race,
                content_hash(entry.data), perceptual_hash(image))
    except (ImageDecodeError, LabelParseError, NoFaceError) as exc:
        return ("skip", entry.name, getattr(exc, "reason", str(exc)))
    except Exception as exc:  # noqa: BLE001 - one odd file must never stop an ingest
        return ("skip", entry.name, f"unexpected error: {type(exc).__name__}: {exc}")


_SHARED_IMAGES: np.ndarray | None = None
"""``(slots, S, S, 3)`` uint8 in an anonymous shared mapping, created before the worker pool forks so
workers inherit it: they write decoded images there and return only labels and hashes, which keeps the
parent (the one process that also streams the archive and writes HDF5) from unpickling every image."""


def _process_into_slot(task: tuple[int, Entry], work: Callable[[Entry], tuple]) -> tuple:
    slot, entry = task
    result = work(entry)
    if result[0] == "ok" and _SHARED_IMAGES is not None:
        _SHARED_IMAGES[slot] = result[2]
        result = (*result[:2], slot, *result[3:])  # the image travels through the shared mapping
    return result


def _batched(items: Iterable, n: int) -> Iterator[list]:
    it = iter(items)
    while block := list(islice(it, n)):
        yield block


# ------------------------------------------------------------------------------------------ the HDF5 file
def _settings(source: Path, size: int, labels_csv: Path | None, align: bool, label_format: str,
              max_file_mb: float) -> dict:
    return {
        "source": str(Path(source).resolve()),
        "source_bytes": Path(source).stat().st_size if Path(source).is_file() else -1,
        "size": int(size),
        "labels_csv": str(labels_csv) if labels_csv else "",
        "align": bool(align),
        "label_format": label_format,
        "max_file_mb": float(max_file_mb),
    }


def _create(path: Path, size: int, settings: dict) -> h5py.File:
    f = h5py.File(path, "w")
    f.create_dataset("images", (0, size, size, 3), np.uint8, maxshape=(None, size, size, 3),
                     chunks=(1, size, size, 3))
    for name, dtype in [("age", np.int16), ("gender", np.int8), ("race", np.int8), ("sha1", "S40"),
                        ("phash", np.uint64), ("filename", _STR)]:
        f.create_dataset(name, (0,), dtype, maxshape=(None,), chunks=(4096,))
    skipped = f.create_group("skipped")
    for name in ("filename", "reason"):
        skipped.create_dataset(name, (0,), _STR, maxshape=(None,), chunks=(256,))
    f.attrs.update({k: v for k, v in settings.items()})
    f.attrs.update({"color_order": "RGB", "resize_method": RESIZE_METHOD, "deepage_version": __version__,
                    "complete": False})
    return f


def _append(ds: h5py.Dataset, values) -> None:
    n = ds.shape[0]
    ds.resize(n + len(values), axis=0)
    ds[n:] = values


def _truncate(f: h5py.File, n_images: int, n_skipped: int) -> None:
    for name in _COLUMNS:
        f[name].resize(n_images, axis=0)
    for name in ("filename", "reason"):
        f["skipped"][name].resize(n_skipped, axis=0)


def _skipped_rows(f: h5py.File) -> list[tuple[str, str]]:
    return list(zip(f["skipped"]["filename"].asstr()[:], f["skipped"]["reason"].asstr()[:], strict=True))


def read_summary(path: Path) -> IngestSummary:
    """The summary of an already finished ingest file."""
    with open_h5(path) as f:
        skipped = _skipped_rows(f)
        n_images = int(f.attrs["n_images"])
    return IngestSummary(output=Path(path), n_entries=n_images + len(skipped), n_images=n_images,
                         skipped=skipped, already_done=True)


_DUPLICATE = "duplicate name in the source"


class _BlockWriter:
    """Appends each finished block to the partial file, then records the progress atomically.

    Also refuses a second file under a name already ingested (an archive may hold one name twice; both
    would land in the file and, one day, on both sides of a split); the first one is kept.
    """

    def __init__(self, f: h5py.File, progress_path: Path, settings: dict, summary: IngestSummary,
                 progress: Callable[[int], None] | None) -> None:
        self.f, self.progress_path, self.settings, self.summary, self.progress = f, progress_path, settings, \
            summary, progress
        # name -> SHA-1 of every row already in the file (a resumed run continues the same check)
        self.seen = dict(zip(f["filename"].asstr()[:], f["sha1"][:], strict=True))

    def _refuse_duplicate(self, result: tuple) -> tuple:
        if result[0] != "ok":
            return result
        name, sha1 = result[1], result[6]
        if name not in self.seen:
            self.seen[name] = sha1
            return result
        same = "the same bytes as" if self.seen[name] == sha1 else "other bytes than"
        return ("skip", name, f"{_DUPLICATE}: {same} the file already ingested under this name (kept)")

    def commit(self, results: list[tuple]) -> None:
        results = [self._refuse_duplicate(r) for r in results]
        ok = [r for r in results if r[0] == "ok"]
        bad = [r for r in results if r[0] == "skip"]
        f = self.f
        if ok:
            _append(f["images"], np.stack([r[2] for r in ok]))
            for name, col, dtype in (("age", 3, np.int16), ("gender", 4, np.int8), ("race", 5, np.int8),
                                     ("sha1", 6, "S40"), ("phash", 7, np.uint64)):
                _append(f[name], np.array([r[col] for r in ok], dtype))
            _append(f["filename"], [r[1] for r in ok])
        if bad:
            _append(f["skipped"]["filename"], [r[1] for r in bad])
            _append(f["skipped"]["reason"], [r[2] for r in bad])
            self.summary.skipped.extend((r[1], r[2]) for r in bad)
        self.summary.n_entries += len(results)
        self.summary.n_images += len(ok)
        f.flush()
        _write_progress(self.progress_path, self.settings, self.summary)
        if self.progress is not None:
            self.progress(self.summary.n_entries)


def _write_progress(path: Path, settings: dict, summary: IngestSummary) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"settings": settings, "n_entries": summary.n_entries,
                               "n_images": summary.n_images, "n_skipped": summary.n_skipped}))
    os.replace(tmp, path)  # atomic: the progress file always describes rows that were flushed


# ----------------------------------------------------------------------------------- partial file, resume
@dataclass(frozen=True)
class _Partial:
    """``OUT.partial`` and its progress record."""

    path: Path
    progress: Path

    @classmethod
    def of(cls, output: Path) -> _Partial:
        return cls(output.with_name(output.name + ".partial"), output.with_name(output.name + ".partial.progress.json"))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.progress.unlink(missing_ok=True)


def _settings_differ(partial: _Partial, recorded: dict, settings: dict, n_entries: int) -> ValueError:
    """An error that says what the interrupted run was, what differs, and the two ways on."""
    recorded = {**_DEFAULT_SETTINGS, **recorded}
    changes = "; ".join(f"{k}: {recorded.get(k)!r} then, {v!r} now" for k, v in settings.items()
                        if recorded.get(k) != v)
    return ValueError(
        f"{partial.path} is an interrupted ingest of {recorded.get('source')} ({n_entries} files done) with "
        f"other settings ({changes}). Re-run the command that started it to resume, or add --overwrite to "
        f"discard it and start over from {settings['source']}")


def _open_partial(partial: _Partial, output: Path, size: int, settings: dict,
                  overwrite: bool) -> tuple[h5py.File, IngestSummary]:
    """Resume ``OUT.partial`` when its recorded settings are this run's, else start a new one."""
    state = json.loads(partial.progress.read_text()) if partial.progress.exists() else {}
    # A record of zero files (left by versions that kept the partial file of a run that failed at once)
    # holds nothing to resume: start over whatever its settings.
    if partial.path.exists() and state.get("n_entries") and not overwrite:
        if {**_DEFAULT_SETTINGS, **state["settings"]} != settings:
            raise _settings_differ(partial, state["settings"], settings, state["n_entries"])
        f = None
        try:
            f = h5py.File(partial.path, "r+")
            _truncate(f, state["n_images"], state["n_skipped"])  # drop rows written after the last record
            summary = IngestSummary(output=output, n_entries=state["n_entries"], n_images=state["n_images"],
                                    skipped=_skipped_rows(f), resumed_from=state["n_entries"])
            return f, summary
        except (OSError, KeyError):  # the kill hit a metadata write: start over, still correct
            if f is not None:
                f.close()
    f = _create(partial.path, size, settings)
    f.flush()
    summary = IngestSummary(output=output)
    _write_progress(partial.progress, settings, summary)
    return f, summary


# -------------------------------------------------------------------------------------------- the workers
def _run_serial(blocks: Iterable[list[Entry]], work: Callable, commit: Callable) -> None:
    for block in blocks:
        commit([work(e) for e in block])


def _run_spawned(blocks: Iterable[list[Entry]], work: Callable, commit: Callable, workers: int) -> None:
    with mp.get_context("spawn").Pool(workers) as pool:
        for block in blocks:
            commit(pool.map(work, block, chunksize=16))


def _run_forked(blocks: Iterable[list[Entry]], work: Callable, commit: Callable, workers: int, size: int,
                block_size: int) -> None:
    """Up to ``in_flight`` blocks queued: workers decode the next blocks while this process writes one, and
    memory stays bounded whatever the size of the source. Block k owns the slots
    ``[(k % in_flight) * block_size, ...)`` of the shared image buffer until it is committed."""
    global _SHARED_IMAGES
    in_flight = 3
    shared = mmap.mmap(-1, in_flight * block_size * size * size * 3)
    _SHARED_IMAGES = np.frombuffer(shared, np.uint8).reshape(in_flight * block_size, size, size, 3)
    slot_work = partial(_process_into_slot, work=work)

    def collect(results: list[tuple]) -> list[tuple]:
        return [(*r[:2], _SHARED_IMAGES[r[2]], *r[3:]) if r[0] == "ok" and isinstance(r[2], int) else r
                for r in results]

    try:
        with mp.get_context("fork").Pool(workers) as pool:
            pending: deque = deque()
            for k, block in enumerate(blocks):
                base = (k % in_flight) * block_size
                pending.append(pool.map_async(slot_work, [(base + i, e) for i, e in enumerate(block)],
                                              chunksize=16))
                if len(pending) >= in_flight:
                    commit(collect(pending.popleft().get()))
            while pending:
                commit(collect(pending.popleft().get()))
    finally:
        _SHARED_IMAGES = None
        shared.close()


def _check_arguments(size: int, label_format: str, labels_csv: Path | None, max_file_mb: float,
                     workers: int | None = None) -> None:
    """Everything that can be refused before a file is written."""
    if size < 16:
        raise ValueError(f"--size must be at least 16 pixels, got {size}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1 (or left out: every core), got {workers}")
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"--format {label_format!r}: choose one of {sorted(LABEL_FORMATS)}")
    if max_file_mb <= 0:
        raise ValueError(f"--max-file-mb must be positive, got {max_file_mb}")
    if labels_csv is not None:
        if not labels_csv.is_file():
            raise FileNotFoundError(f"labels CSV {labels_csv} not found")
        read_labels_csv(labels_csv)  # its errors name the line


def ingest(
    source: str | Path,
    output: str | Path,
    size: int = 128,
    workers: int | None = None,
    labels_csv: str | Path | None = None,
    align: bool = False,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    block_size: int = BLOCK_SIZE,
    label_format: str = "utkface",
    max_file_mb: float = MAX_FILE_MB,
) -> IngestSummary:
    """Read every image of ``source`` into ``output`` (HDF5), resumable; see the module docstring.

    ``workers`` processes decode in parallel (default: all cores). ``align`` runs the face aligner of
    :mod:`deepage.faces` on each image first, for in-the-wild photos. ``label_format``: how
    labels are read from file names (``utkface`` or ``fgnet``, see :data:`~deepage.data.sources.LABEL_FORMATS`)
    unless ``labels_csv`` gives them. Files over ``max_file_mb`` (declared size) are skipped unread.
    ``progress`` is called with the number of entries done after each block.
    """
    source, output = Path(source), Path(output)
    labels_csv = Path(labels_csv) if labels_csv else None
    _check_arguments(size, label_format, labels_csv, max_file_mb, workers)
    if output.is_dir():
        raise IsADirectoryError(f"-o {output} is a folder: give the HDF5 file to write, e.g. {output / 'data.h5'}")
    if output.exists() and not overwrite:
        try:
            with open_h5(output) as f:
                done = bool(f.attrs.get("complete", False))
        except ValueError as exc:
            raise FileExistsError(f"{exc}; it exists: delete it, choose another -o, or pass --overwrite") from None
        if done:
            return read_summary(output)
        raise FileExistsError(f"{output} exists but is not a finished ingest; delete it or pass --overwrite")
    check_source(source)  # before OUT.partial exists: a mistyped path must leave nothing behind
    settings = _settings(source, size, labels_csv, align, label_format, max_file_mb)
    output.parent.mkdir(parents=True, exist_ok=True)  # `-o work/data.h5` on a fresh clone: make `work/`
    partial_file = _Partial.of(output)
    started = time.perf_counter()
    f, summary = _open_partial(partial_file, output, size, settings, overwrite)
    try:
        writer = _BlockWriter(f, partial_file.progress, settings, summary, progress)
        _ingest_entries(source, labels_csv, size, workers, align, label_format, max_file_mb, block_size, writer)
        if summary.n_entries == 0:
            raise ValueError(f"{source} holds no image files (looked for {', '.join(IMAGE_SUFFIXES)}); nothing "
                             "was written")
        f.attrs.update({"n_images": summary.n_images, "n_skipped": summary.n_skipped, "complete": True})
    except BaseException:
        f.close()
        if summary.n_entries == 0:  # nothing was written: no partial file to resume, nothing to block a re-run
            partial_file.remove()
        raise
    f.close()
    os.replace(partial_file.path, output)
    partial_file.progress.unlink(missing_ok=True)
    summary.seconds = time.perf_counter() - started
    return summary


def _ingest_entries(source: Path, labels_csv: Path | None, size: int, workers: int | None, align: bool,
                    label_format: str, max_file_mb: float, block_size: int, writer: _BlockWriter) -> None:
    """Stream the source's entries after those already written, decode them in ``workers`` processes and
    commit them block by block."""
    aligner = None
    if align:
        from ..faces import FaceAligner  # imported lazily: only --align needs the detector

        aligner = FaceAligner(output_size=max(size, 200)).align_largest
    work = partial(process_entry, size=size, align=aligner, label_format=label_format)
    entries = islice(iter_entries(source, labels_csv, max_file_mb), writer.summary.n_entries, None)
    blocks = _batched(entries, block_size)
    workers = max(1, workers or os.cpu_count() or 1)
    if workers == 1:
        _run_serial(blocks, work, writer.commit)
    elif os.name != "posix":
        _run_spawned(blocks, work, writer.commit, workers)
    else:
        _run_forked(blocks, work, writer.commit, workers, size, block_size)
