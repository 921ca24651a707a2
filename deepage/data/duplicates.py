"""``deepage duplicates``: the audit of duplicate groups saved by ``deepage split``.

Each group of two or more images judged to be the same photograph (see :mod:`deepage.data.split` for the
rule) is listed with its members' labels; a group whose members carry different ages is a *conflict*:
at most one of those ages can be right, and training can leave such groups out
(``drop_conflicting_duplicates: true``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .h5file import open_h5
from .split import SPLIT_NAMES, read_split

__all__ = ["DuplicateGroup", "duplicate_report", "conflicting_rows", "write_duplicates_csv"]


@dataclass(frozen=True)
class DuplicateGroup:
    """One group: HDF5 rows, file names, ages, genders, races and split names of its members."""

    group: int
    rows: tuple[int, ...]
    filenames: tuple[str, ...]
    ages: tuple[int, ...]
    genders: tuple[int, ...]
    races: tuple[int, ...]
    splits: tuple[str, ...]

    @property
    def conflicting_age(self) -> bool:
        return len(set(self.ages)) > 1

    @property
    def age_spread(self) -> int:
        return max(self.ages) - min(self.ages)

    def to_dict(self) -> dict:
        return {"group": self.group, "conflicting_age": self.conflicting_age, "age_spread": self.age_spread,
                "members": [{"row": r, "filename": n, "age": a, "gender": g, "race": c, "split": s}
                            for r, n, a, g, c, s in zip(self.rows, self.filenames, self.ages, self.genders,
                                                        self.races, self.splits, strict=True)]}


def _groups_of(f: h5py.File, path: Path) -> np.ndarray:
    if "dup_group" not in f:
        raise ValueError(f"{path} has no duplicate groups yet; run `deepage split {path}` first")
    return f["dup_group"][:]


def duplicate_report(path: str | Path) -> list[DuplicateGroup]:
    """Every group of two or more images in a split file, largest age spread first."""
    path = Path(path)
    with open_h5(path) as f:
        groups = _groups_of(f, path)
        split, _ = read_split(f)
        names = f["filename"].asstr()[:]
        ages, genders, races = f["age"][:], f["gender"][:], f["race"][:]
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    out = []
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        out.append(DuplicateGroup(
            group=int(groups[members[0]]), rows=tuple(int(r) for r in members),
            filenames=tuple(str(names[r]) for r in members), ages=tuple(int(ages[r]) for r in members),
            genders=tuple(int(genders[r]) for r in members), races=tuple(int(races[r]) for r in members),
            splits=tuple(SPLIT_NAMES[split[r]] if split is not None else "unsplit" for r in members)))
    out.sort(key=lambda g: (-g.age_spread, g.group))
    return out


def conflicting_rows(groups: np.ndarray, ages: np.ndarray) -> np.ndarray:
    """``(N,) bool``: rows whose duplicate group (``groups`` ``(N,)``) holds more than one age."""
    order = np.argsort(groups, kind="stable")
    g, a = groups[order], ages[order]
    starts = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
    spread = np.maximum.reduceat(a, starts) - np.minimum.reduceat(a, starts)  # per group
    per_row = np.repeat(spread > 0, np.diff(np.r_[starts, len(g)]))
    out = np.empty(len(groups), bool)
    out[order] = per_row
    return out


def write_duplicates_csv(groups: list[DuplicateGroup], out: str | Path) -> int:
    """One row per member: ``group,conflicting_age,age_spread,filename,age,gender,race,split``."""
    n = 0
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["group", "conflicting_age", "age_spread", "filename", "age", "gender", "race", "split"])
        for g in groups:
            for name, age, gender, race, split in zip(g.filenames, g.ages, g.genders, g.races, g.splits,
                                                      strict=True):
                writer.writerow([g.group, int(g.conflicting_age), g.age_spread, name, age, gender, race, split])
                n += 1
    return n
