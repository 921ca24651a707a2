"""``deepage split``: a stratified train/val/test split in which duplicate groups never straddle splits.

Duplicates: images with the same file bytes (SHA-1) and images whose 64-bit perceptual hashes differ in
at most ``near_threshold`` bits are joined (union-find) into one group; a group goes to one split whole.

Why 4 bits: on UTKFace's 21,336 images the pairs at Hamming distance 0, 2, 4 number 670, 297, 277, then
jump to 1,850 at 6 and 13,916 at 8 (distances are even: each hash has exactly 32 bits set). Looking at
random pairs, those at <= 4 are mostly the same photo (re-encoded, re-labelled: some copies carry
different ages) and those at 6 are mostly different people. Grouping a few look-alikes costs nothing;
missing a copy leaks a test face into training, so the threshold sits at the top of the knee.

The split is stored in the HDF5 file (``split`` int8: 0 train, 1 val, 2 test; ``dup_group`` int32) with
its settings and a fingerprint: a hash of the sorted content hashes in each split, so that two files
holding the same split of the same images agree whatever their row order.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..labels import get_scheme

__all__ = ["SPLIT_NAMES", "duplicate_groups", "assign_splits", "split_dataset", "SplitInfo", "export_csv",
           "read_split", "copy_split"]

SPLIT_NAMES = ("train", "val", "test")
SPLIT_SETTINGS = ("split_seed", "split_fractions", "split_stratify", "split_near_threshold")
"""HDF5 attributes, beside ``split_fingerprint``, recording how a split was made."""
DEFAULT_NEAR_THRESHOLD = 4


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def duplicate_groups(sha1: np.ndarray, phash: np.ndarray, near_threshold: int = DEFAULT_NEAR_THRESHOLD,
                     block: int = 1024) -> np.ndarray:
    """Group id per image ``(N,) int32`` (ids 0..G-1, in order of first appearance).

    Exact duplicates share ``sha1``; near duplicates have ``popcount(phash_a ^ phash_b) <= near_threshold``.
    All pairs are compared in blocks: 21k images take about two seconds.
    """
    n = len(sha1)
    uf = _UnionFind(n)
    first_seen: dict[bytes, int] = {}
    for i, h in enumerate(sha1):
        j = first_seen.setdefault(bytes(h), i)
        if j != i:
            uf.union(i, j)
    if near_threshold >= 0:
        ph = np.asarray(phash, dtype=np.uint64)
        for start in range(0, n, block):
            dist = np.bitwise_count(ph[start : start + block, None] ^ ph[None, :])
            rows, cols = np.nonzero(dist <= near_threshold)
            rows += start
            for a, b in zip(rows[rows < cols], cols[rows < cols], strict=True):
                uf.union(int(a), int(b))
    roots = np.array([uf.find(i) for i in range(n)])
    _, group = np.unique(roots, return_inverse=True)
    return group.astype(np.int32)


def assign_splits(strata: np.ndarray, groups: np.ndarray, fractions: tuple[float, float, float],
                  seed: int) -> np.ndarray:
    """Split id per image ``(N,) int8``: every group whole in one split, each stratum divided by ``fractions``.

    A group's stratum is the stratum of its median member. Within a stratum, groups are shuffled (seeded),
    then each goes to the split furthest below its target count: proportions match to within one group.
    """
    rng = np.random.default_rng(seed)
    out = np.empty(len(groups), np.int8)
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    bounds = np.flatnonzero(np.diff(sorted_groups)) + 1
    members = np.split(order, bounds)
    group_stratum = np.array([np.sort(strata[m])[len(m) // 2] for m in members])
    target = np.asarray(fractions, dtype=float)
    for stratum in np.unique(group_stratum):
        ids = np.flatnonzero(group_stratum == stratum)
        ids = ids[rng.permutation(len(ids))]
        counts = np.zeros(3)
        total = sum(len(members[g]) for g in ids)
        for g in ids:
            deficit = target * total - counts
            k = int(np.argmax(deficit))
            out[members[g]] = k
            counts[k] += len(members[g])
    return out


def fingerprint(sha1: np.ndarray, split: np.ndarray) -> str:
    """16 hex digits identifying which images (by content) sit in which split."""
    h = hashlib.sha256()
    for k, name in enumerate(SPLIT_NAMES):
        h.update(name.encode())
        for digest in sorted(bytes(s) for s in sha1[split == k]):
            h.update(digest)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class SplitInfo:
    """A saved split: counts per split, its fingerprint and the settings that made it."""

    counts: dict[str, int]
    fingerprint: str
    seed: int
    fractions: tuple[float, float, float]
    stratify: str
    near_threshold: int
    n_groups: int
    n_images_in_dup_groups: int


def split_dataset(path: str | Path, test: float = 0.2, val: float = 0.1, seed: int = 0, stratify: str = "utk14",
                  near_threshold: int = DEFAULT_NEAR_THRESHOLD) -> SplitInfo:
    """Compute and save the split of an ingested HDF5 file; same inputs, same split."""
    if not (0 <= test < 1 and 0 <= val < 1 and test + val < 1):
        raise ValueError(f"--test and --val must be fractions with test + val < 1, got test={test}, val={val}")
    scheme = get_scheme(stratify)
    with h5py.File(path, "r+") as f:
        if not f.attrs.get("complete", False):
            raise ValueError(f"{path} is not a finished ingest (run deepage ingest first)")
        sha1, phash, ages = f["sha1"][:], f["phash"][:], f["age"][:]
        groups = duplicate_groups(sha1, phash, near_threshold)
        split = assign_splits(np.asarray(scheme.classify(ages)), groups, (1 - test - val, val, test), seed)
        return _save_split(f, sha1, split, groups, {
            "split_seed": seed, "split_fractions": [1 - test - val, val, test], "split_stratify": scheme.name,
            "split_near_threshold": near_threshold})


def _save_split(f: h5py.File, sha1: np.ndarray, split: np.ndarray, groups: np.ndarray, settings: dict) -> SplitInfo:
    """Write ``split`` and ``dup_group`` (both ``(N,)``), the fingerprint and ``settings`` (``split_*``
    attributes) into ``f``; return the summary."""
    for name, data in (("split", split), ("dup_group", groups)):
        if name in f:
            del f[name]
        f.create_dataset(name, data=data)
    fp = fingerprint(sha1, split)
    f.attrs.update({"split_fingerprint": fp, **settings})
    sizes = np.bincount(groups)
    return SplitInfo(
        counts={n: int((split == k).sum()) for k, n in enumerate(SPLIT_NAMES)}, fingerprint=fp,
        seed=int(settings["split_seed"]), fractions=tuple(float(x) for x in settings["split_fractions"]),
        stratify=str(settings["split_stratify"]), near_threshold=int(settings["split_near_threshold"]),
        n_groups=int((sizes > 0).sum()), n_images_in_dup_groups=int(sizes[sizes > 1].sum()),
    )


def copy_split(source: str | Path, target: str | Path) -> SplitInfo:
    """Give ``target`` the split saved in ``source``: the same images ingested at another size.

    Perceptual hashes are computed on the stored (resized) image, so re-splitting a file ingested at
    another size could group near duplicates slightly differently. Copying keeps one test set across
    resolutions. Images are matched by file-content hash (SHA-1), which is what the fingerprint covers, so
    the row order may differ; every image of ``target`` must be in ``source``.
    """
    with h5py.File(source, "r") as f:
        src_split, _ = read_split(f)
        if src_split is None:
            raise ValueError(f"{source} has no saved split; run deepage split on it first")
        src_sha1, src_groups = f["sha1"][:], f["dup_group"][:]
        settings = {k: f.attrs[k] for k in SPLIT_SETTINGS}
    row_of = {bytes(s): i for i, s in enumerate(src_sha1)}
    with h5py.File(target, "r+") as f:
        if not f.attrs.get("complete", False):
            raise ValueError(f"{target} is not a finished ingest (run deepage ingest first)")
        sha1, names = f["sha1"][:], f["filename"].asstr()[:]
        missing = [n for s, n in zip(sha1, names, strict=True) if bytes(s) not in row_of]
        if missing:
            raise ValueError(f"{len(missing)} images of {target} are not in {source}, e.g. {missing[0]!r}")
        rows = np.array([row_of[bytes(s)] for s in sha1], dtype=np.int64)
        return _save_split(f, sha1, src_split[rows], src_groups[rows], settings)


def read_split(f: h5py.File) -> tuple[np.ndarray | None, str]:
    """``(split ids (N,) int8 or None, fingerprint)``; ``None, "unsplit"`` for a file never split."""
    if "split" not in f:
        return None, "unsplit"
    return f["split"][:], str(f.attrs["split_fingerprint"])


def export_csv(path: str | Path, out: str | Path) -> int:
    """Write ``filename,split`` for every image; returns the number of rows."""
    with h5py.File(path, "r") as f:
        split, _ = read_split(f)
        if split is None:
            raise ValueError(f"{path} has no saved split; run deepage split first")
        names = f["filename"].asstr()[:]
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "split"])
        writer.writerows((n, SPLIT_NAMES[s]) for n, s in zip(names, split, strict=True))
    return len(names)
