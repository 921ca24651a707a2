"""``deepage split``: a stratified train/val/test split in which duplicate groups never straddle splits.

Duplicates are joined into groups (connected components of the "same photograph" graph) and a group goes
to one split whole. Two images are the same photograph when any of these holds:

1. the same file bytes (SHA-1);
2. 64-bit perceptual hashes within ``near_threshold`` (4) bits — re-encodings and re-labelled copies;
3. **the pixel check**, for copies that pHash misses (colour change, a slightly different crop or tilt):
   grey thumbnails of the central 70 % of the face correlate at >= ``COARSE_MIN`` (0.93, 16×16, every
   pair compared) *and* the best normalised cross-correlation of the central 44×44 of one 64×64 grey
   thumbnail over ±3-pixel shifts of the other is >= ``FINE_MIN`` (0.965).

Calibration (UTKFace, the 21,336 images of ``../shared``; ``deepage duplicates`` lists the groups):

* pHash alone (<= 4 bits) missed same-photo pairs at 6-16 bits, several with different ages (e.g.
  ``45_0_1_20170117194133909`` / ``60_0_0_20170113210127337``: re-coloured and tilted, pHash 12 bits);
  the eleven such pairs reported in issue 9 have coarse correlation >= 0.99 and fine >= 0.979.
* Aligned faces of *different* people correlate highly at 16×16 (120,794 pairs >= 0.85, 12,347 >= 0.90),
  so the coarse score only nominates candidates (2,410 pairs >= 0.93). The fine score separates them:
  among candidates it has median 0.91-0.94 for different photos; looking at 16 random pairs per band,
  fine 0.965-0.975 was 16 of 16 the same photo, 0.955-0.965 about 12 of 16 (the rest: the same person in
  another photo, or look-alikes), so the threshold sits at 0.965: precision about 1.0 above it in the
  pairs looked at. Grouping a few look-alikes costs only a little randomness in the split; missing a copy
  leaks a test face into training.
* Counts on that archive: see ``docs/RESULTS.md`` ("A split without leaks"), measured with
  ``deepage split`` and ``deepage duplicates``.

The split is stored in the HDF5 file (``split`` int8: 0 train, 1 val, 2 test; ``dup_group`` int32) with
its settings and a fingerprint: a hash of the sorted content hashes in each split, so that two files
holding the same split of the same images agree whatever their row order.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import h5py
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..labels import get_scheme
from .h5file import open_h5, require_datasets

__all__ = ["SPLIT_NAMES", "duplicate_groups", "same_photo_pairs", "grey_thumbnails", "assign_splits",
           "split_dataset", "SplitInfo", "export_csv", "read_split", "copy_split"]

SPLIT_NAMES = ("train", "val", "test")
SPLIT_SETTINGS = ("split_seed", "split_fractions", "split_stratify", "split_near_threshold", "split_pixel_check")
"""HDF5 attributes, beside ``split_fingerprint``, recording how a split was made."""
DEFAULT_NEAR_THRESHOLD = 4
COARSE_MIN = 0.93  # 16×16 central-crop grey correlation that makes a pair a candidate
FINE_MIN = 0.965  # best 44×44 normalised cross-correlation over ±3 px that confirms it
_THUMB = 64  # grey thumbnail side for the fine check
_MARGIN = 10  # pixels of the 64 px thumbnail left out on each side (the central 44×44, ~70 %)
_SHIFT = 3


def grey_thumbnails(images: np.ndarray | h5py.Dataset, chunk: int = 2048) -> np.ndarray:
    """``(N, S, S, 3) uint8`` RGB → ``(N, 64, 64) uint8`` grey thumbnails (INTER_AREA), read in chunks."""
    n = len(images)
    out = np.empty((n, _THUMB, _THUMB), np.uint8)
    for start in range(0, n, chunk):
        block = np.asarray(images[start : start + chunk])
        for k, img in enumerate(block):
            grey = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
            out[start + k] = cv2.resize(grey, (_THUMB, _THUMB), interpolation=cv2.INTER_AREA)
    return out


def _coarse_vectors(thumbs: np.ndarray) -> np.ndarray:
    """``(N, 64, 64) uint8`` → ``(N, 256) float32``: the central crop at 16×16, zero-mean, unit norm."""
    centre = thumbs[:, _MARGIN : _THUMB - _MARGIN, _MARGIN : _THUMB - _MARGIN]
    vecs = np.stack([cv2.resize(c, (16, 16), interpolation=cv2.INTER_AREA) for c in centre]).reshape(len(thumbs), -1)
    vecs = vecs.astype(np.float32)
    vecs -= vecs.mean(axis=1, keepdims=True)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True) + 1e-6
    return vecs


def _fine_score(a: np.ndarray, b: np.ndarray) -> float:
    """Best normalised cross-correlation of ``a``'s central 44×44 over ±3-px shifts in ``b`` (both 64×64)."""
    template = a[_MARGIN : _THUMB - _MARGIN, _MARGIN : _THUMB - _MARGIN]
    lo, hi = _MARGIN - _SHIFT, _THUMB - _MARGIN + _SHIFT
    return float(cv2.matchTemplate(b[lo:hi, lo:hi], template, cv2.TM_CCOEFF_NORMED).max())


def same_photo_pairs(thumbs: np.ndarray, coarse_min: float = COARSE_MIN, fine_min: float = FINE_MIN,
                     block: int = 2048) -> np.ndarray:
    """``(P, 2) int64`` index pairs ``i < j`` that pass the pixel check (module docstring), from
    ``(N, 64, 64) uint8`` grey thumbnails. Every pair is compared coarsely (21k images: a few seconds)."""
    vecs = _coarse_vectors(thumbs)
    found = []
    for start in range(0, len(vecs), block):
        sims = vecs[start : start + block] @ vecs.T  # (b, N)
        rows, cols = np.nonzero(sims >= coarse_min)
        rows += start
        for i, j in zip(rows[rows < cols], cols[rows < cols], strict=True):
            if _fine_score(thumbs[i], thumbs[j]) >= fine_min or _fine_score(thumbs[j], thumbs[i]) >= fine_min:
                found.append((int(i), int(j)))
    return np.array(found, dtype=np.int64).reshape(-1, 2)


def duplicate_groups(sha1: np.ndarray, phash: np.ndarray, near_threshold: int = DEFAULT_NEAR_THRESHOLD,
                     thumbs: np.ndarray | None = None, block: int = 1024) -> np.ndarray:
    """Group id per image ``(N,) int32`` (ids 0..G-1, in order of first appearance).

    Joined: equal ``sha1``; ``popcount(phash_a ^ phash_b) <= near_threshold`` (skipped when negative);
    and, when ``thumbs`` ``(N, 64, 64) uint8`` are given, pairs passing :func:`same_photo_pairs`.
    """
    n = len(sha1)
    edges: list[np.ndarray] = []
    first_seen: dict[bytes, int] = {}
    for i, h in enumerate(sha1):
        j = first_seen.setdefault(bytes(h), i)
        if j != i:
            edges.append(np.array([[j, i]]))
    if near_threshold >= 0:
        ph = np.asarray(phash, dtype=np.uint64)
        for start in range(0, n, block):
            dist = np.bitwise_count(ph[start : start + block, None] ^ ph[None, :])
            rows, cols = np.nonzero(dist <= near_threshold)
            rows += start
            edges.append(np.stack([rows[rows < cols], cols[rows < cols]], axis=1))
    if thumbs is not None:
        edges.append(same_photo_pairs(thumbs))
    pairs = np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # renumber in order of first appearance, so ids do not depend on scipy's labelling
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[labels].astype(np.int32)


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
                  near_threshold: int = DEFAULT_NEAR_THRESHOLD, pixel_check: bool = True) -> SplitInfo:
    """Compute and save the split of an ingested HDF5 file; same inputs, same split.

    ``pixel_check=False`` groups by SHA-1 and pHash only (the rule before issue 9; it leaks re-coloured
    and re-cropped copies across splits)."""
    if not (0 <= test < 1 and 0 <= val < 1 and test + val < 1):
        raise ValueError(f"--test and --val must be fractions with test + val < 1, got test={test}, val={val}")
    scheme = get_scheme(stratify)
    with open_h5(path, "r+") as f:
        if not f.attrs.get("complete", False):
            raise ValueError(f"{path} is not a finished ingest (run deepage ingest first)")
        require_datasets(f, path, ("images", "age", "sha1", "phash"))
        sha1, phash, ages = f["sha1"][:], f["phash"][:], f["age"][:]
        thumbs = grey_thumbnails(f["images"]) if pixel_check else None
        groups = duplicate_groups(sha1, phash, near_threshold, thumbs=thumbs)
        split = assign_splits(np.asarray(scheme.classify(ages)), groups, (1 - test - val, val, test), seed)
        return _save_split(f, sha1, split, groups, {
            "split_seed": seed, "split_fractions": [1 - test - val, val, test], "split_stratify": scheme.name,
            "split_near_threshold": near_threshold, "split_pixel_check": pixel_check})


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
    with open_h5(source) as f:
        src_split, _ = read_split(f)
        if src_split is None:
            raise ValueError(f"{source} has no saved split; run deepage split on it first")
        src_sha1, src_groups = f["sha1"][:], f["dup_group"][:]
        settings = {k: f.attrs[k] for k in SPLIT_SETTINGS if k in f.attrs}
    row_of = {bytes(s): i for i, s in enumerate(src_sha1)}
    with open_h5(target, "r+") as f:
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
    with open_h5(path) as f:
        split, _ = read_split(f)
        if split is None:
            raise ValueError(f"{path} has no saved split; run deepage split first")
        names = f["filename"].asstr()[:]
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "split"])
        writer.writerows((n, SPLIT_NAMES[s]) for n, s in zip(names, split, strict=True))
    return len(names)
