"""Batches of one split of an ingested HDF5 file, augmented on whole batches.

The split is held in memory as uint8 when it fits (a UTKFace split at 128 px is under 1 GB); otherwise
each batch reads its rows one by one in sorted order (h5py fancy indexing is 20-300x slower).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from ..degradations import PhotoAugmentation, photo_augment
from ..preprocessing import Augmentation, Preprocessing, prepare_batch
from .duplicates import conflicting_rows
from .h5file import open_h5, require_datasets
from .split import SPLIT_NAMES, read_split

__all__ = ["FaceData", "Batch", "FaceBatches", "load_split", "TRAIN_AND_VAL", "sample_inputs"]


@dataclass
class FaceData:
    """Images and labels of one split. ``images`` is ``(N, S, S, 3) uint8 RGB`` (tensor) or, when not held
    in memory, ``None`` with ``source``/``rows`` telling where to read them."""

    images: torch.Tensor | None
    age: torch.Tensor  # (N,) int64 years
    gender: torch.Tensor  # (N,) int64, -1 unknown
    race: torch.Tensor  # (N,) int64, -1 unknown
    rows: np.ndarray  # (N,) row of each image in the HDF5 file
    fingerprint: str
    stored_size: int
    source: Path | None = None

    def __len__(self) -> int:
        return len(self.age)

    def read_images(self, idx: np.ndarray) -> torch.Tensor:
        """``(B, S, S, 3) uint8`` for positions ``idx`` of this split."""
        if self.images is not None:
            return self.images[torch.as_tensor(idx, device=self.images.device)]
        order = np.argsort(self.rows[idx])
        out = np.empty((len(idx), self.stored_size, self.stored_size, 3), np.uint8)
        with h5py.File(self.source, "r") as f:
            ds = f["images"]
            for k in order:
                out[k] = ds[int(self.rows[idx[k]])]
        return torch.from_numpy(out)


TRAIN_AND_VAL = "train+val"


def load_split(path: str | Path, split: str = "train", max_memory_gb: float = 8.0,
               drop_conflicting: bool = False) -> FaceData:
    """Load one split (``train``, ``val``, ``test``, ``train+val`` or ``all``) of an ingested file.

    A file without a saved split can only be loaded as ``all``. ``drop_conflicting``: leave out every image
    of a duplicate group whose members carry different ages (see ``deepage duplicates``).
    """
    path = Path(path)
    with open_h5(path) as f:
        if not f.attrs.get("complete", False):
            raise ValueError(f"{path} is not a finished ingest")
        require_datasets(f, path)  # a file marked complete may still lack them (written by something else)
        assignment, fp = read_split(f)
        n = f["age"].shape[0]
        if split == "all":
            rows = np.arange(n)
        elif split in SPLIT_NAMES or split == TRAIN_AND_VAL:
            if assignment is None:
                raise ValueError(f"{path} has no saved split; run `deepage split {path}` or use --split all")
            parts = split.split("+")  # train+val: a final model trained on both once validation chose its length
            rows = np.flatnonzero(np.isin(assignment, [SPLIT_NAMES.index(p) for p in parts]))
        else:
            raise ValueError(f"unknown split {split!r}; choose train, val, test, {TRAIN_AND_VAL} or all")
        if drop_conflicting:
            if "dup_group" not in f:
                raise ValueError(f"{path}: drop_conflicting needs the duplicate groups of `deepage split`")
            rows = rows[~conflicting_rows(f["dup_group"][:], f["age"][:])[rows]]
        size = int(f.attrs["size"])
        in_memory = len(rows) * size * size * 3 <= max_memory_gb * 2**30
        images = None
        if in_memory:
            images_np = np.empty((len(rows), size, size, 3), np.uint8)
            ds = f["images"]
            # Read contiguous runs of rows as slices (fast), not a fancy index.
            breaks = np.flatnonzero(np.diff(rows) != 1) + 1
            pos = 0
            for run in np.split(rows, breaks):
                if len(run):
                    for start in range(0, len(run), 4096):
                        part = run[start : start + 4096]
                        images_np[pos : pos + len(part)] = ds[part[0] : part[-1] + 1]
                        pos += len(part)
            images = torch.from_numpy(images_np)

        def col(name: str) -> torch.Tensor:
            return torch.from_numpy(f[name][:][rows].astype(np.int64))

        return FaceData(images=images, age=col("age"), gender=col("gender"), race=col("race"), rows=rows,
                        fingerprint=fp, stored_size=size, source=path)


@dataclass
class Batch:
    """``x``: ``(B, 3, H, W)`` float model input; ``age``: ``(B,)`` int64 years; ``index``: ``(B,)`` positions
    in the :class:`FaceData`."""

    x: torch.Tensor
    age: torch.Tensor
    index: torch.Tensor


class FaceBatches:
    """Iterate over a :class:`FaceData` in batches.

    Deterministic for a seed: epoch ``e`` shuffles with ``seed + e`` (call :meth:`set_epoch`). ``photo``:
    the old-photo degradations of :mod:`deepage.degradations`, drawn from the same per-batch generator. With
    ``world_size > 1`` each rank takes every ``world_size``-th image of the shuffled order (its shard).
    Evaluation (``shuffle=False, drop_last=False``) visits every image exactly once.
    """

    def __init__(self, data: FaceData, pre: Preprocessing, batch_size: int = 64, shuffle: bool = False,
                 augment: Augmentation | None = None, drop_last: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1, photo: PhotoAugmentation | None = None) -> None:
        self.data, self.pre, self.batch_size, self.photo = data, pre, batch_size, photo
        self.shuffle, self.augment, self.drop_last, self.seed = shuffle, augment, drop_last, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        n = len(self.data)
        order = np.random.default_rng(self.seed + self.epoch).permutation(n) if self.shuffle else np.arange(n)
        if self.world_size > 1:
            if self.shuffle:  # equal shard sizes keep DDP ranks in step
                order = order[: n - n % self.world_size]
            order = order[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self._order())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_from(0)

    def iter_from(self, start_batch: int) -> Iterator[Batch]:
        """Batches of the current epoch from batch number ``start_batch`` on (to resume mid-epoch).

        Each batch's augmentation is seeded by (seed, epoch, batch, rank) alone, so skipping batches
        changes nothing in the ones that follow.
        """
        order = self._order()
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for number, start in enumerate(range(0, stop, self.batch_size)):
            if number < start_batch:
                continue
            idx = order[start : start + self.batch_size]
            gen = None
            if self.augment is not None or self.photo is not None:
                gen = torch.Generator().manual_seed(
                    hash((self.seed, self.epoch, number, self.rank)) & 0x7FFF_FFFF_FFFF_FFFF)
            images = self.data.read_images(idx)
            if self.photo is not None:  # old-photo degradations on the stored uint8 images, before the geometry
                images = photo_augment(images, self.photo, gen)
            x = prepare_batch(images, self.pre, self.augment, gen)
            yield Batch(x=x, age=self.data.age[torch.as_tensor(idx)], index=torch.as_tensor(idx))


def sample_inputs(path: str | Path, pre: Preprocessing, n: int = 256, split: str = "train",
                  seed: int = 0) -> np.ndarray:
    """``(n, 3, S, S)`` float32: ``n`` images drawn (seeded) from ``split`` of ``path``, through the evaluation
    transform of ``pre`` (what int8 quantisation calibrates its activation ranges on)."""
    data = load_split(path, split)
    if len(data) == 0:
        raise ValueError(f"split '{split}' of {path} holds no images")
    rows = np.sort(np.random.default_rng(seed).choice(len(data), size=min(n, len(data)), replace=False))
    return prepare_batch(data.read_images(rows), pre).numpy()
