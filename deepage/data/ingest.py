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
result holds exactly the rows an uninterrupted run would. Only a finished file is renamed to ``OUT``.
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
from ..imageio import RESIZE_METHOD, ImageDecodeError, content_hash, decode_image, perceptual_hash, square_resize
from .sources import Entry, LabelParseError, iter_entries, parse_utkface_name

__all__ = ["ingest", "IngestSummary", "process_entry", "BLOCK_SIZE"]

BLOCK_SIZE = 512
"""Entries per written block: the most an interrupted run can lose."""

_STR = h5py.string_dtype("utf-8")


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

    def to_dict(self) -> dict:
        return {
            "output": str(self.output),
            "n_entries": self.n_entries,
            "n_images": self.n_images,
            "n_skipped": self.n_skipped,
            "skipped": [{"filename": n, "reason": r} for n, r in self.skipped],
            "seconds": round(self.seconds, 2),
            "resumed_from_entry": self.resumed_from,
        }


def process_entry(entry: Entry, size: int, align: Callable | None = None) -> tuple:
    """Decode, label and hash one entry (runs in a worker process).

    Returns ``("ok", name, image (S, S, 3) uint8 RGB, age, gender, race, sha1, phash)`` or
    ``("skip", name, reason)``; never raises for a bad file.
    """
    try:
        labels = entry.labels if entry.labels is not None else parse_utkface_name(entry.name)
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


def _process_into_slot(task: tuple[int, Entry], size: int, align: Callable | None) -> tuple:
    slot, entry = task
    result = process_entry(entry, size, align)
    if result[0] == "ok" and _SHARED_IMAGES is not None:
        _SHARED_IMAGES[slot] = result[2]
        result = (*result[:2], slot, *result[3:])  # the image travels through the shared mapping
    return result


def _batched(items: Iterable, n: int) -> Iterator[list]:
    it = iter(items)
    while block := list(islice(it, n)):
        yield block


def _settings(source: Path, size: int, labels_csv: Path | None, align: bool) -> dict:
    return {
        "source": str(Path(source).resolve()),
        "source_bytes": Path(source).stat().st_size if Path(source).is_file() else -1,
        "size": int(size),
        "labels_csv": str(labels_csv) if labels_csv else "",
        "align": bool(align),
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
    for name in ("images", "age", "gender", "race", "sha1", "phash", "filename"):
        f[name].resize(n_images, axis=0)
    for name in ("filename", "reason"):
        f["skipped"][name].resize(n_skipped, axis=0)


def _write_block(f: h5py.File, results: list[tuple], summary: IngestSummary) -> None:
    ok = [r for r in results if r[0] == "ok"]
    bad = [r for r in results if r[0] == "skip"]
    if ok:
        _append(f["images"], np.stack([r[2] for r in ok]))
        _append(f["age"], np.array([r[3] for r in ok], np.int16))
        _append(f["gender"], np.array([r[4] for r in ok], np.int8))
        _append(f["race"], np.array([r[5] for r in ok], np.int8))
        _append(f["sha1"], np.array([r[6] for r in ok], "S40"))
        _append(f["phash"], np.array([r[7] for r in ok], np.uint64))
        _append(f["filename"], [r[1] for r in ok])
    if bad:
        _append(f["skipped"]["filename"], [r[1] for r in bad])
        _append(f["skipped"]["reason"], [r[2] for r in bad])
        summary.skipped.extend((r[1], r[2]) for r in bad)
    summary.n_entries += len(results)
    summary.n_images += len(ok)


def _write_progress(path: Path, settings: dict, summary: IngestSummary) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"settings": settings, "n_entries": summary.n_entries,
                               "n_images": summary.n_images, "n_skipped": summary.n_skipped}))
    os.replace(tmp, path)  # atomic: the progress file always describes rows that were flushed


def read_summary(path: Path) -> IngestSummary:
    """The summary of an already finished ingest file."""
    with h5py.File(path, "r") as f:
        skipped = list(zip(f["skipped"]["filename"].asstr()[:], f["skipped"]["reason"].asstr()[:], strict=True))
        n_images = int(f.attrs["n_images"])
    return IngestSummary(output=Path(path), n_entries=n_images + len(skipped), n_images=n_images,
                         skipped=skipped, already_done=True)


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
) -> IngestSummary:
    """Read every image of ``source`` into ``output`` (HDF5), resumable; see the module docstring.

    ``workers`` processes decode in parallel (default: all cores). ``align`` runs the face aligner of
    :mod:`deepage.inference.faces` on each image first, for in-the-wild photos. ``progress`` is called
    with the number of entries done after each block.
    """
    source, output = Path(source), Path(output)
    labels_csv = Path(labels_csv) if labels_csv else None
    if size < 16:
        raise ValueError(f"--size must be at least 16 pixels, got {size}")
    if output.exists() and not overwrite:
        with h5py.File(output, "r") as f:
            done = bool(f.attrs.get("complete", False))
        if done:
            return read_summary(output)
        raise FileExistsError(f"{output} exists but is not a finished ingest; delete it or pass --overwrite")
    partial_path = output.with_name(output.name + ".partial")
    progress_path = output.with_name(output.name + ".partial.progress.json")
    settings = _settings(source, size, labels_csv, align)
    summary = IngestSummary(output=output)
    started = time.perf_counter()

    f = None
    if partial_path.exists() and progress_path.exists() and not overwrite:
        state = json.loads(progress_path.read_text())
        if state["settings"] != settings:
            raise ValueError(
                f"{partial_path} is an interrupted ingest with other settings ({state['settings']}); "
                "delete it, or re-run with the same settings to resume"
            )
        try:
            f = h5py.File(partial_path, "r+")
            _truncate(f, state["n_images"], state["n_skipped"])  # drop rows written after the last record
            summary.n_entries, summary.n_images = state["n_entries"], state["n_images"]
            summary.skipped = list(zip(f["skipped"]["filename"].asstr()[:], f["skipped"]["reason"].asstr()[:],
                                       strict=True))
            summary.resumed_from = state["n_entries"]
        except (OSError, KeyError):  # the kill hit a metadata write: start over, still correct
            if f is not None:
                f.close()
            f, summary = None, IngestSummary(output=output)
    if f is None:
        f = _create(partial_path, size, settings)
        f.flush()
        _write_progress(progress_path, settings, summary)

    aligner = None
    if align:
        from ..faces import FaceAligner  # imported lazily: only --align needs the detector

        aligner = FaceAligner(output_size=max(size, 200)).align_largest
    work = partial(process_entry, size=size, align=aligner)
    entries = islice(iter_entries(source, labels_csv), summary.n_entries, None)
    blocks = _batched(entries, block_size)
    workers = max(1, workers or os.cpu_count() or 1)

    def commit(results: list[tuple]) -> None:
        _write_block(f, results, summary)
        f.flush()
        _write_progress(progress_path, settings, summary)
        if progress is not None:
            progress(summary.n_entries)

    try:
        if workers == 1:
            for block in blocks:
                commit([work(e) for e in block])
        elif os.name != "posix":
            with mp.get_context("spawn").Pool(workers) as pool:
                for block in blocks:
                    commit(pool.map(work, block, chunksize=16))
        else:
            # Up to IN_FLIGHT blocks queued: workers decode the next blocks while this process writes one,
            # and memory stays bounded whatever the size of the source. Block k owns the slots
            # [(k % IN_FLIGHT) * block_size, ...) of the shared image buffer until it is committed.
            global _SHARED_IMAGES
            in_flight = 3
            shared = mmap.mmap(-1, in_flight * block_size * size * size * 3)
            _SHARED_IMAGES = np.frombuffer(shared, np.uint8).reshape(in_flight * block_size, size, size, 3)
            slot_work = partial(_process_into_slot, size=size, align=aligner)

            def collect(results: list[tuple]) -> list[tuple]:
                return [(*r[:2], _SHARED_IMAGES[r[2]], *r[3:]) if r[0] == "ok" and isinstance(r[2], int) else r
                        for r in results]

            try:
                with mp.get_context("fork").Pool(workers) as pool:
                    pending: deque = deque()
                    for k, block in enumerate(blocks):
                        base = (k % in_flight) * block_size
                        tasks = [(base + i, e) for i, e in enumerate(block)]
                        pending.append(pool.map_async(slot_work, tasks, chunksize=16))
                        if len(pending) >= in_flight:
                            commit(collect(pending.popleft().get()))
                    while pending:
                        commit(collect(pending.popleft().get()))
            finally:
                _SHARED_IMAGES = None
                shared.close()
        f.attrs.update({"n_images": summary.n_images, "n_skipped": summary.n_skipped, "complete": True})
    finally:
        f.close()
    os.replace(partial_path, output)
    progress_path.unlink(missing_ok=True)
    summary.seconds = time.perf_counter() - started
    return summary
