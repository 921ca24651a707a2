"""Same-photo grouping beyond pHash (the pixel check), the duplicate audit, and training without conflicts."""

from __future__ import annotations

import json
import tarfile

import cv2
import h5py
import numpy as np
import pytest

from deepage.cli import main as cli
from deepage.data.duplicates import conflicting_rows, duplicate_report
from deepage.data.ingest import ingest
from deepage.data.loader import load_split
from deepage.data.split import duplicate_groups, grey_thumbnails, same_photo_pairs, split_dataset

from .conftest import write_utk_folder


def _photo(seed: int, size: int = 128) -> np.ndarray:
    """A smooth random 'photograph' ``(size, size, 3)`` uint8 RGB: blurred noise with some blobs."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), (0, 0), 6)
    img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX)
    for _ in range(6):
        centre = tuple(int(v) for v in rng.integers(20, size - 20, 2))
        cv2.circle(img, centre, int(rng.integers(5, 18)), tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
    return cv2.GaussianBlur(img, (0, 0), 1.5)


def _recoloured_recropped(img: np.ndarray) -> np.ndarray:
    """The same photograph re-coloured (warmer, brighter), cropped 4 % tighter and tilted 2 degrees."""
    size = img.shape[0]
    warm = np.clip(img.astype(np.float32) * [1.15, 1.0, 0.8] + 20, 0, 255).astype(np.uint8)
    m = cv2.getRotationMatrix2D((size / 2, size / 2), 2.0, 1.04)
    return cv2.warpAffine(warm, m, (size, size), borderMode=cv2.BORDER_REPLICATE)


def _phash_bits(a: np.ndarray, b: np.ndarray) -> int:
    from deepage.imageio import perceptual_hash

    return int(np.bitwise_count(np.uint64(perceptual_hash(a)) ^ np.uint64(perceptual_hash(b))))


def test_pixel_check_joins_a_recoloured_recropped_copy_that_phash_misses():
    originals = [_photo(s) for s in range(6)]
    copy = _recoloured_recropped(originals[1])
    assert _phash_bits(originals[1], copy) > 4  # the old rule alone would leave this pair apart
    images = np.stack([*originals, copy])
    pairs = same_photo_pairs(grey_thumbnails(images))
    assert pairs.tolist() == [[1, 6]]
    sha = np.array([bytes([i]) * 20 for i in range(7)], dtype="S20")
    phash = np.arange(7, dtype=np.uint64) * np.uint64(0x0F0F_0F0F)  # far apart
    groups = duplicate_groups(sha, phash, thumbs=grey_thumbnails(images))
    assert groups[1] == groups[6] and len(set(groups.tolist())) == 6
    assert len(set(duplicate_groups(sha, phash).tolist())) == 7  # without thumbnails: hash rules only


def test_groups_are_transitive_and_numbered_by_first_appearance():
    sha = np.array([b"a", b"b", b"a", b"c", b"d", b"e"], dtype="S1")
    phash = np.array([0xFF00, 0, 0xFF00, 0xFFFF << 32, 0b11, 0b1111], dtype=np.uint64)
    groups = duplicate_groups(sha, phash, near_threshold=2)
    # 0 = 2 (same bytes); 1 ~ 4 and 4 ~ 5 (2 bits each), so 1, 4, 5 are one group though 1 and 5 are 4 bits apart
    assert groups.tolist() == [0, 1, 0, 2, 1, 1]


def test_conflicting_rows():
    groups = np.array([0, 1, 0, 2, 1, 3])
    ages = np.array([30, 20, 45, 9, 20, 70])
    assert conflicting_rows(groups, ages).tolist() == [True, False, True, False, False, False]


@pytest.fixture
def conflicted_h5(tmp_path):
    """30 synthetic images plus a re-coloured copy of one (another age) and an exact copy (same age)."""
    folder = tmp_path / "UTKFace"
    folder.mkdir()
    for i in range(30):  # distinct photographs (write_utk_folder's synthetic faces differ only in noise)
        cv2.imwrite(str(folder / f"{20 + i}_0_0_2017010200000{i:04d}.jpg.chip.jpg"),
                    cv2.cvtColor(_photo(100 + i, 64), cv2.COLOR_RGB2BGR))
    photo = _photo(7)
    cv2.imwrite(str(folder / "25_0_0_20170101000000001.jpg.chip.jpg"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "41_0_0_20170101000000002.jpg.chip.jpg"),
                cv2.cvtColor(_recoloured_recropped(photo), cv2.COLOR_RGB2BGR))
    other = _photo(8)
    cv2.imwrite(str(folder / "60_1_1_20170101000000003.jpg.chip.jpg"), cv2.cvtColor(other, cv2.COLOR_RGB2BGR))
    (folder / "60_1_1_20170101000000004.jpg.chip.jpg").write_bytes(
        (folder / "60_1_1_20170101000000003.jpg.chip.jpg").read_bytes())
    out = tmp_path / "c.h5"
    ingest(folder, out, size=64, workers=1)
    split_dataset(out, test=0.2, val=0.2, seed=0)
    return out


def test_duplicate_audit_flags_conflicting_ages(conflicted_h5, capsys, tmp_path):
    groups = duplicate_report(conflicted_h5)
    by_ages = {g.ages: g for g in groups}
    conflict = by_ages.get((25, 41)) or by_ages[(41, 25)]
    assert conflict.conflicting_age and conflict.age_spread == 16 and len(set(conflict.splits)) == 1
    assert not by_ages[(60, 60)].conflicting_age
    assert groups[0] is conflict  # largest spread first

    assert cli(["duplicates", str(conflicted_h5), "--conflicts-only", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len(shown) == 1 and {m["age"] for m in shown[0]["members"]} == {25, 41}
    assert cli(["duplicates", str(conflicted_h5)]) == 0
    text = capsys.readouterr()
    assert "CONFLICT (ages 25-41)" in text.out and "1 with conflicting ages" in text.err
    assert cli(["duplicates", str(conflicted_h5), "--csv", str(tmp_path / "d.csv")]) == 0
    assert (tmp_path / "d.csv").read_text().count("\n") == 1 + 4


def test_training_data_can_leave_out_conflicting_groups(conflicted_h5):
    with h5py.File(conflicted_h5) as f:
        names = f["filename"].asstr()[:]
        split = f["split"][:]
    conflicted = [i for i, n in enumerate(names) if n.startswith(("25_0_0_2017010100", "41_0_0_2017010100"))]
    name = ("train", "val", "test")[split[conflicted[0]]]
    kept = load_split(conflicted_h5, name)
    dropped = load_split(conflicted_h5, name, drop_conflicting=True)
    assert len(kept) - len(dropped) == 2
    assert set(conflicted) <= set(kept.rows.tolist()) and not set(conflicted) & set(dropped.rows.tolist())


def test_audit_needs_a_split(tmp_path, capsys):
    write_utk_folder(tmp_path / "U", n=5)
    ingest(tmp_path / "U", tmp_path / "u.h5", size=32, workers=1)
    assert cli(["duplicates", str(tmp_path / "u.h5")]) != 0
    assert "deepage split" in capsys.readouterr().err


# The same-photo pairs reported in issue 9 (seed 0 put each on both sides of the old split).
ISSUE9_PAIRS = [
    ("10_0_0_20170110220316298", "10_0_0_20170110220539329"), ("18_1_0_20170109212538216", "18_1_0_20170109212914272"),
    ("24_1_4_20170117194833796", "30_1_4_20170117194826836"), ("26_0_1_20170116221029791", "35_0_1_20170117151527396"),
    ("28_1_0_20170109141748286", "30_1_3_20170109141058153"), ("29_0_1_20170117094755752", "31_0_1_20170116024257506"),
    ("31_0_3_20170119195952148", "46_0_3_20170119202435756"), ("35_0_1_20170117123836138", "36_0_1_20170117154315346"),
    ("44_1_0_20170117190015938", "56_1_0_20170110141232209"), ("45_0_1_20170117194133909", "60_0_0_20170113210127337"),
    ("48_0_0_20170116233057278", "55_0_0_20170117135556303"),
]


@pytest.mark.slow
def test_real_same_photo_pairs_are_grouped(utkface_archive, tmp_path):
    """Each pair of issue 9 (re-coloured, re-cropped or re-labelled copies in the real archive) is one group,
    and the 200 other images taken beside them are not joined to them."""
    wanted = {f"UTKFace/{n}.jpg.chip.jpg" for pair in ISSUE9_PAIRS for n in pair}
    sliced = tmp_path / "pairs.tar"
    others = 0
    with tarfile.open(utkface_archive, "r|gz") as src, tarfile.open(sliced, "w") as dst:
        for member in src:
            if member.isfile() and (member.name in wanted or others < 200):
                others += member.name not in wanted
                dst.addfile(member, src.extractfile(member))
    out = tmp_path / "pairs.h5"
    ingest(sliced, out, size=128, workers=2)
    split_dataset(out, seed=0)
    with h5py.File(out) as f:
        row = {n.split("/")[-1].split(".")[0]: i for i, n in enumerate(f["filename"].asstr()[:])}
        groups, split = f["dup_group"][:], f["split"][:]
    for a, b in ISSUE9_PAIRS:
        assert groups[row[a]] == groups[row[b]], (a, b)
        assert split[row[a]] == split[row[b]]
        assert (groups == groups[row[a]]).sum() == 2, f"{a}: its group holds other images"
