"""Shared fixtures: tiny generated face-like data sets, ingested and split, and a tiny trained checkpoint."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
UTKFACE_ARCHIVE = SHARED / "data" / "UTKFace.tar.gz"


def synthetic_face(age: int, seed: int, size: int = 48) -> np.ndarray:
    """An RGB ``(size, size, 3)`` uint8 image whose brightness and blob size depend on ``age``,
    so that a tiny model can learn something from it."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 40 + 2 * min(age, 90), np.uint8)
    radius = 4 + (age % 40) // 4
    cv2.circle(img, (size // 2, size // 2), radius, (200, 120, 90), -1)
    noise = rng.integers(0, 20, img.shape, dtype=np.uint8)
    return cv2.add(img, noise)


def write_utk_folder(folder: Path, n: int = 60, size: int = 48, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` synthetic JPEGs named like UTKFace (``age_gender_race_datetime.jpg.chip.jpg``)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        age = int(rng.integers(1, 90))
        name = f"{age}_{i % 2}_{i % 5}_2017011{i:09d}.jpg.chip.jpg"
        rgb = synthetic_face(age, seed * 10_000 + i, size)
        cv2.imwrite(str(folder / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        out.append((name, age))
    return out


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory) -> Path:
    """Exported ONNX graphs are cached in a folder of this test session, not in the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("onnx-cache")
    os.environ["DEEPAGE_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory) -> Path:
    """A finished, split HDF5 of 120 synthetic images at 32 px (session-wide; treat as read-only)."""
    from deepage.data.ingest import ingest
    from deepage.data.split import split_dataset

    root = tmp_path_factory.mktemp("tiny")
    write_utk_folder(root / "UTKFace", n=120)
    out = root / "tiny.h5"
    ingest(root / "UTKFace", out, size=32, workers=1)
    split_dataset(out, test=0.25, val=0.25, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_h5, tmp_path_factory) -> Path:
    """``best.pt`` of a 'cnn' model with a dex head trained a few steps on ``tiny_h5`` (session-wide)."""
    from deepage.config import TrainConfig
    from deepage.training.engine import train

    out = tmp_path_factory.mktemp("runs")
    config = TrainConfig(data=str(tiny_h5), model="mobilenet_v2_tiny", head="dex", input_size=32, epochs=2,
                         batch_size=16, out_dir=str(out), name="tiny", progress=False, num_threads=1)
    result = train(config)
    return result.run_dir / "best.pt"


@pytest.fixture(scope="session")
def utkface_archive() -> Path:
    if not UTKFACE_ARCHIVE.is_file():
        pytest.fail(f"the real UTKFace archive is expected at {UTKFACE_ARCHIVE} (../shared beside the repo)")
    return UTKFACE_ARCHIVE


def write_bomb_png(path: Path, side: int = 20000) -> Path:
    """A valid grey PNG of ``side`` x ``side`` pixels, all black: 400 million pixels in ~390 KB at 20000
    (a decompression bomb). Written row by row, so making it takes no memory."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + side)  # filter byte, then the pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="session")
def bomb_png(tmp_path_factory) -> Path:
    """A real 20000 x 20000 PNG bomb (~390 KB; session-wide)."""
    return write_bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png")
