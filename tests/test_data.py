"""Data pipeline: name parsing, ingest (bad files, archives, CSV labels, resume after SIGKILL), split, info."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import signal
import tarfile
import time
import zipfile
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from PIL import Image

from deepage.cli import main as cli
from deepage.data.info import dataset_info
from deepage.data.ingest import ingest
from deepage.data.sources import LabelParseError, Labels, parse_utkface_name
from deepage.data.split import copy_split, duplicate_groups, export_csv, split_dataset

from .conftest import synthetic_face, write_utk_folder


@pytest.mark.parametrize(("name", "labels"), [
    ("UTKFace/100_0_0_20170112213500903.jpg.chip.jpg", Labels(100, 0, 0)),
    ("24_0_1_20170116220224657 .jpg.chip.jpg", Labels(24, 0, 1)),
    ("55_0_0_20170116232725357jpg.chip.jpg", Labels(55, 0, 0)),
    ("39_1_20170116174525125.jpg.chip.jpg", Labels(39, 1, -1)),
    ("1_1_4_20161221193016140.jpg.chip.jpg", Labels(1, 1, 4)),
])
def test_parse_utkface_names(name, labels):
    assert parse_utkface_name(name) == labels


@pytest.mark.parametrize(("name", "match"),
                         [("face.jpg", "does not follow"), ("130_0_0_20170112213500903.jpg", "outside")])
def test_parse_bad_names(name, match):
    with pytest.raises(LabelParseError, match=match):
        parse_utkface_name(name)


def _jpeg(rgb: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", **kw)
    return buf.getvalue()


def make_salted_folder(folder: Path) -> dict[str, str]:
    """Good images of many kinds plus bad files; returns {bad file name: expected reason fragment}."""
    write_utk_folder(folder, n=10)
    face = synthetic_face(30, 1)
    Image.fromarray(face).convert("L").save(folder / "31_0_1_20170101000000001.jpg.chip.jpg")  # grayscale
    Image.fromarray(face).convert("CMYK").save(folder / "32_0_1_20170101000000002.jpg.chip.jpg")  # CMYK JPEG
    rgba = np.dstack([face, np.full(face.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "33_1_2_20170101000000003.png")  # PNG with alpha
    good_bytes = _jpeg(face)
    bad = {
        "40_0_0_20170101000000004.jpg.chip.jpg": "truncated",
        "41_0_0_20170101000000005.jpg.chip.jpg": "empty",
        "42_0_0_20170101000000006.jpg.chip.jpg": "not an image",
        "no_labels_here.jpg": "does not follow",
        "150_0_0_20170101000000007.jpg.chip.jpg": "outside",
        "43_0_0_20170101000000008.jpg.chip.jpg": "corrupt",
    }
    (folder / "40_0_0_20170101000000004.jpg.chip.jpg").write_bytes(good_bytes[: len(good_bytes) // 2])
    (folder / "41_0_0_20170101000000005.jpg.chip.jpg").write_bytes(b"")
    (folder / "42_0_0_20170101000000006.jpg.chip.jpg").write_text("this is a text file, not a JPEG\n")
    (folder / "no_labels_here.jpg").write_bytes(good_bytes)
    (folder / "150_0_0_20170101000000007.jpg.chip.jpg").write_bytes(good_bytes)
    # A JPEG header and end marker with garbage between: the header parses, the decoder fails.
    (folder / "43_0_0_20170101000000008.jpg.chip.jpg").write_bytes(good_bytes[:600] + bytes(3000) + b"\xff\xd9")
    return bad


def test_ingest_salted_folder_reports_and_skips(tmp_path, capsys):
    bad = make_salted_folder(tmp_path / "faces")
    out = tmp_path / "salted.h5"
    assert cli(["ingest", str(tmp_path / "faces"), "-o", str(out), "--size", "32", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    with h5py.File(out) as f:
        names = set(f["filename"].asstr()[:])
        assert f["images"].shape == (13, 32, 32, 3) and f["images"].dtype == np.uint8
        skipped = dict(zip(f["skipped"]["filename"].asstr()[:], f["skipped"]["reason"].asstr()[:], strict=True))
        assert f.attrs["color_order"] == "RGB" and f.attrs["complete"]
        race = dict(zip(f["filename"].asstr()[:], f["race"][:], strict=True))
    assert not names & set(bad)
    assert "33_1_2_20170101000000003.png" in names and race["33_1_2_20170101000000003.png"] == 2
    assert set(skipped) == set(bad)
    for name, fragment in bad.items():
        assert fragment in skipped[name], (name, skipped[name])
        assert name in printed
    assert "skipped 6" in printed


def test_ingest_is_rgb_and_square(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :, 0] = 255  # pure red, wider than tall
    cv2.imwrite(str(folder / "20_0_0_20170101000000001.jpg.chip.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    ingest(folder, tmp_path / "o.h5", size=16, workers=1)
    with h5py.File(tmp_path / "o.h5") as f:
        px = f["images"][0].reshape(-1, 3).mean(0)
    assert px[0] > 200 and px[1] < 40 and px[2] < 40


def test_ingest_archives_and_csv_labels(tmp_path):
    folder = tmp_path / "UTKFace"
    files = write_utk_folder(folder, n=8)
    tgz = tmp_path / "UTKFace.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(folder, arcname="UTKFace")
    zpath = tmp_path / "UTKFace.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name, _ in files:
            zf.write(folder / name, f"UTKFace/{name}")
    results = []
    for src in (folder, tgz, zpath):
        out = tmp_path / f"{src.name}.h5"
        summary = ingest(src, out, size=24, workers=1)
        assert summary.n_images == 8 and summary.n_skipped == 0
        with h5py.File(out) as f:
            results.append(sorted(zip(f["sha1"][:].tolist(), f["age"][:].tolist(), strict=True)))
    assert results[0] == results[1] == results[2]
    # Any folder of faces with a CSV of labels.
    plain = tmp_path / "plain"
    plain.mkdir()
    for i, (name, _) in enumerate(files[:3]):
        (plain / f"img{i}.jpg").write_bytes((folder / name).read_bytes())
    (plain / "unlabelled.jpg").write_bytes((folder / files[3][0]).read_bytes())
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,age,gender\nimg0.jpg,7,1\nimg1.jpg,70,0\nimg2.jpg,33,\n")
    summary = ingest(plain, tmp_path / "plain.h5", size=24, workers=1, labels_csv=csv_path)
    assert summary.n_images == 3 and summary.skipped == [("unlabelled.jpg", "no row for this file in the labels CSV")]
    with h5py.File(tmp_path / "plain.h5") as f:
        assert f["age"][:].tolist() == [7, 70, 33] and f["gender"][:].tolist() == [1, 0, -1]


def _slow_ingest(src: str, out: str) -> None:
    # Runs in a child process: one worker, small blocks, a pause after each block so the parent can kill it.
    ingest(src, out, size=24, workers=1, block_size=10, progress=lambda n: time.sleep(0.15))


def test_ingest_resumes_after_sigkill(tmp_path):
    folder = tmp_path / "UTKFace"
    write_utk_folder(folder, n=90)
    (folder / "bad_name.jpg").write_bytes(b"junk")
    reference = tmp_path / "reference.h5"
    ingest(folder, reference, size=24, workers=1)

    out = tmp_path / "killed.h5"
    progress_file = tmp_path / "killed.h5.partial.progress.json"
    child = mp.get_context("fork").Process(target=_slow_ingest, args=(str(folder), str(out)))
    child.start()
    deadline = time.time() + 30
    while time.time() < deadline:
        if progress_file.exists() and json.loads(progress_file.read_text())["n_entries"] >= 30:
            break
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert not out.exists(), "a half-written ingest must never carry the final name"
    assert (tmp_path / "killed.h5.partial").exists()

    summary = ingest(folder, out, size=24, workers=2)
    assert summary.resumed_from >= 30
    with h5py.File(reference) as a, h5py.File(out) as b:
        for name in ("images", "age", "gender", "race", "sha1", "phash"):
            np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)
        assert a["filename"].asstr()[:].tolist() == b["filename"].asstr()[:].tolist()
        assert b["skipped"]["filename"].asstr()[:].tolist() == ["bad_name.jpg"]
    assert not (tmp_path / "killed.h5.partial").exists()
    # Running the same command on a finished file changes nothing.
    assert ingest(folder, out, size=24).already_done


def test_resume_with_other_settings_is_refused(tmp_path):
    folder = tmp_path / "UTKFace"
    write_utk_folder(folder, n=12)
    out = tmp_path / "o.h5"
    child = mp.get_context("fork").Process(target=_slow_ingest, args=(str(folder), str(out)))
    child.start()
    time.sleep(0.05)
    deadline = time.time() + 20
    progress_file = tmp_path / "o.h5.partial.progress.json"
    # a partial file that recorded no block holds nothing to resume (and is started over): wait for one
    while time.time() < deadline and not (progress_file.exists()
                                          and json.loads(progress_file.read_text())["n_entries"]):
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    with pytest.raises(ValueError, match="other settings"):
        ingest(folder, out, size=32, workers=1)


def test_duplicate_groups_exact_and_near():
    sha = np.array([b"a" * 40, b"b" * 40, b"a" * 40, b"c" * 40, b"d" * 40], dtype="S40")
    ph = np.array([0, 0xFFFF_0000_0000_0000, 0x1234, 0xFFFF_0000_0000_000F, 0x0F0F_0F0F_0F0F_0F0F],
                  dtype=np.uint64)
    groups = duplicate_groups(sha, ph, near_threshold=4)
    assert groups[0] == groups[2]  # same bytes
    assert groups[1] == groups[3]  # 4 bits apart
    assert len({groups[0], groups[1], groups[4]}) == 3
    assert len(set(duplicate_groups(sha, ph, near_threshold=3).tolist())) == 4


def test_split_keeps_groups_whole_and_is_reproducible(tmp_path):
    folder = tmp_path / "UTKFace"
    files = write_utk_folder(folder, n=80)
    # Exact copies (one with another age) and a re-encoded near copy.
    (folder / "77_0_0_20170199999999991.jpg.chip.jpg").write_bytes((folder / files[0][0]).read_bytes())
    (folder / "12_0_0_20170199999999992.jpg.chip.jpg").write_bytes((folder / files[0][0]).read_bytes())
    # A smooth picture and a resized, re-encoded copy of it (pHash 2 bits apart).
    y, x = np.mgrid[0:96, 0:96]
    smooth = np.dstack([x * 2, y * 2, x + y]).astype(np.uint8)
    cv2.circle(smooth, (40, 50), 20, (250, 200, 10), -1)
    cv2.imwrite(str(folder / "45_0_0_20170199999999994.jpg.chip.jpg"), smooth, [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(folder / "44_0_0_20170199999999993.jpg.chip.jpg"), cv2.resize(smooth, (90, 90)),
                [cv2.IMWRITE_JPEG_QUALITY, 60])
    out = tmp_path / "d.h5"
    ingest(folder, out, size=32, workers=1)
    info = split_dataset(out, test=0.2, val=0.1, seed=3)
    with h5py.File(out) as f:
        split, groups, names = f["split"][:], f["dup_group"][:], f["filename"].asstr()[:].tolist()
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1
    idx = {n: i for i, n in enumerate(names)}
    assert groups[idx[files[0][0]]] == groups[idx["77_0_0_20170199999999991.jpg.chip.jpg"]]
    assert groups[idx["45_0_0_20170199999999994.jpg.chip.jpg"]] == groups[idx["44_0_0_20170199999999993.jpg.chip.jpg"]]
    assert sum(info.counts.values()) == 84
    export_csv(out, tmp_path / "a.csv")
    again = split_dataset(out, test=0.2, val=0.1, seed=3)
    export_csv(out, tmp_path / "b.csv")
    assert again.fingerprint == info.fingerprint
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    assert split_dataset(out, test=0.2, val=0.1, seed=4).fingerprint != info.fingerprint
    with pytest.raises(ValueError, match="fractions"):
        split_dataset(out, test=0.7, val=0.5)


def test_copy_split_keeps_one_test_set_across_sizes(tmp_path, capsys):
    """The same images ingested at another size get the same split (matched by content hash, not row)."""
    folder = tmp_path / "UTKFace"
    write_utk_folder(folder, n=60)
    small, large = tmp_path / "s.h5", tmp_path / "l.h5"
    ingest(folder, small, size=32, workers=1)
    ingest(folder, large, size=48, workers=1)
    info = split_dataset(small, test=0.2, val=0.2, seed=5)
    with h5py.File(large, "r+") as f:  # shuffle the rows of the larger file: matching must not rely on order
        order = np.random.default_rng(0).permutation(60)
        for name in ("sha1", "filename"):
            data = f[name][:][order]
            del f[name]
            f.create_dataset(name, data=data)
    assert cli(["split", str(large), "--from", str(small)]) == 0
    assert info.fingerprint in capsys.readouterr().out
    with h5py.File(small) as a, h5py.File(large) as b:
        by_name = dict(zip(a["filename"].asstr()[:], a["split"][:], strict=True))
        assert all(by_name[n] == k for n, k in zip(b["filename"].asstr()[:], b["split"][:], strict=True))
        assert b.attrs["split_fingerprint"] == info.fingerprint and b.attrs["split_seed"] == 5
    other = tmp_path / "o.h5"
    write_utk_folder(tmp_path / "Other", n=5, seed=99)
    ingest(tmp_path / "Other", other, size=32, workers=1)
    with pytest.raises(ValueError, match="not in"):
        copy_split(small, other)
    with pytest.raises(ValueError, match="no saved split"):
        copy_split(other, small)


def test_info_and_cli(tiny_h5, capsys):
    info = dataset_info(tiny_h5)
    assert info["n_images"] == 120 and info["split"]["counts"]["test"] + info["split"]["counts"]["train"] > 0
    assert sum(info["classes"]["utk14"]["all"].values()) == 120
    assert cli(["info", str(tiny_h5), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 120
    assert cli(["info", str(tiny_h5)]) == 0
    assert "split" in capsys.readouterr().out


def test_cli_reports_missing_source(tmp_path, capsys):
    assert cli(["ingest", str(tmp_path / "nope"), "-o", str(tmp_path / "x.h5")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.slow
def test_real_archive_slice(utkface_archive, tmp_path):
    """A slice of the real archive (irregular names included) through ingest, split and export."""
    irregular = {"UTKFace/24_0_1_20170116220224657 .jpg.chip.jpg", "UTKFace/39_1_20170116174525125.jpg.chip.jpg",
                 "UTKFace/55_0_0_20170116232725357jpg.chip.jpg", "UTKFace/61_1_20170109142408075.jpg.chip.jpg"}
    slice_tgz = tmp_path / "UTKFace.tar.gz"
    kept = 0
    with tarfile.open(utkface_archive, "r|gz") as src, tarfile.open(slice_tgz, "w:gz") as dst:
        for member in src:
            if member.isfile() and (kept < 400 or member.name in irregular):
                dst.addfile(member, src.extractfile(member))
                kept += 1
    out = tmp_path / "slice.h5"
    summary = ingest(slice_tgz, out, size=64, workers=2)
    assert summary.n_skipped == 0 and summary.n_images == kept
    with h5py.File(out) as f:
        names = set(f["filename"].asstr()[:])
    assert irregular <= names
    split_dataset(out, seed=0)
    export_csv(out, tmp_path / "a.csv")
    split_dataset(out, seed=0)
    export_csv(out, tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
