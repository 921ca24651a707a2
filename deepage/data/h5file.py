"""Opening ingested HDF5 files, with one-line errors that name the file (h5py's say "Unable to synchronously
open file (file signature not found)" and name none).
"""

from __future__ import annotations

from pathlib import Path

import h5py

__all__ = ["open_h5", "require_datasets", "INGEST_DATASETS"]

INGEST_DATASETS = ("images", "age", "gender", "race")
"""The datasets every finished ingest holds, and that training and evaluation read."""


def open_h5(path: str | Path, mode: str = "r") -> h5py.File:
    """``h5py.File(path, mode)``; a missing file is ``FileNotFoundError``, a folder ``IsADirectoryError`` and a
    file that is not HDF5 ``ValueError``, each naming ``path``."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not an HDF5 file")
    if mode in ("r", "r+") and not path.exists():
        raise FileNotFoundError(f"data file {path} not found")
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        if path.is_file() and not h5py.is_hdf5(path):
            raise ValueError(f"{path} is not an HDF5 file (expected the output of `deepage ingest`)") from None
        raise OSError(f"{path}: cannot open as HDF5 ({' '.join(str(exc).split())})") from exc


def require_datasets(f: h5py.File, path: str | Path, names: tuple[str, ...] = INGEST_DATASETS) -> None:
    """Refuse a file that lacks one of ``names`` (or the ``size`` attribute), naming what is missing."""
    missing = [name for name in names if name not in f]
    if missing:
        raise ValueError(f"{path} is not a complete deepage ingest: no dataset {', '.join(map(repr, missing))} "
                         "(re-run `deepage ingest` to rebuild it)")
    if "size" not in f.attrs:
        raise ValueError(f"{path} is not a complete deepage ingest: no 'size' attribute (re-run `deepage ingest`)")
