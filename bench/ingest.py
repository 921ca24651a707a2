"""Ingest throughput against a bare read + decode + resize of the same files, in one run.

    python bench/ingest.py [--source ../shared/data/UTKFace.tar.gz] [--size 128] [--workers 2]

Baseline: the same archive streamed by the same code, decoded with OpenCV and resized by the same number
of processes, results thrown away (no labels, hashes, checks or HDF5). Prints both img/s and the ratio
ingest / baseline. Goal: >= 0.8.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from deepage.data.ingest import ingest
from deepage.data.sources import iter_entries

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "UTKFace.tar.gz"


def _bare(item: tuple[bytes, int]) -> int:
    data, size = item
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return int(cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)[0, 0, 0])


def bare_rate(source: Path, size: int, workers: int) -> tuple[int, float]:
    cv2.setNumThreads(1)
    start = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        n = sum(1 for _ in pool.imap_unordered(_bare, ((e.data, size) for e in iter_entries(source)), chunksize=16))
    return n, n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(DEFAULT_SOURCE))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    source = Path(args.source)
    n_bare, bare = bare_rate(source, args.size, args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.h5"
        start = time.perf_counter()
        summary = ingest(source, out, size=args.size, workers=args.workers)
        rate = summary.n_entries / (time.perf_counter() - start)
    print(f"bare read+decode+resize: {n_bare} images, {bare:,.0f} img/s ({args.workers} processes)")
    print(f"deepage ingest:          {summary.n_images} images ({summary.n_skipped} skipped), {rate:,.0f} img/s")
    print(f"ratio ingest / bare: {rate / bare:.2f} (goal >= 0.8)")


if __name__ == "__main__":
    main()
