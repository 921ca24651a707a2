"""Ingest under hostile or mistaken input: oversized archive members, duplicate names, a failed first run,
a resume with another source, and FG-NET's file names."""

from __future__ import annotations

import io
import json
import tarfile
import tracemalloc
import warnings
import zipfile

import h5py
import numpy as np
import pytest

import deepage.data.ingest as ingest_module
from deepage.cli import main as cli
from deepage.data.ingest import ingest
from deepage.data.sources import UNKNOWN, LabelParseError, Labels, iter_entries, parse_fgnet_name

from .conftest import synthetic_face, write_utk_folder

BIG = 16 * 2**20  # a 16 MiB member: compresses to a few KB, decompresses to far more than the 1 MB cap


def _jpeg(age: int, seed: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", synthetic_face(age, seed))
    assert ok
    return buf.tobytes()


def _peak_mb(fn) -> tuple[object, float]:
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_member_over_the_cap_is_skipped_without_being_read(tmp_path, kind):
    archive = tmp_path / f"a.{kind}"
    members = {"UTKFace/30_0_0_20170101000000001.jpg.chip.jpg": _jpeg(30, 1),
               "UTKFace/40_1_2_20170101000000002.jpg.chip.jpg": bytes(BIG)}
    if kind == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    assert archive.stat().st_size < 200_000
    entries, peak = _peak_mb(lambda: list(iter_entries(archive, max_file_mb=1)))
    assert peak < 4, f"read {peak:.1f} MB for a member over a 1 MB cap"
    big = entries[1]
    assert big.data == b"" and "16.0 MB is over the 1 MB cap" in big.skip_reason
    summary = ingest(archive, tmp_path / "o.h5", size=16, workers=1, max_file_mb=1)
    assert summary.n_images == 1 and summary.skipped == [(big.name, big.skip_reason)]


def interrupted(*args, **kwargs):
    raise KeyboardInterrupt


def test_a_failed_first_run_leaves_no_partial_file(tmp_path, monkeypatch):
    out = tmp_path / "o.h5"
    with pytest.raises(FileNotFoundError, match="no such file"):
        ingest(tmp_path / "UTKFcae", out)  # mistyped
    bad_csv = tmp_path / "labels.csv"
    bad_csv.write_text("file,years\na.jpg,3\n")
    write_utk_folder(tmp_path / "UTKFace", n=4)
    with pytest.raises(ValueError, match="missing \\['age', 'path'\\]"):
        ingest(tmp_path / "UTKFace", out, labels_csv=bad_csv)

    def stop(n: int) -> None:
        raise KeyboardInterrupt

    # Interrupted before its first block is written: nothing to resume, so nothing is left.
    monkeypatch.setattr(ingest_module, "process_entry", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest(tmp_path / "UTKFace", out, size=16, workers=1, block_size=2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["UTKFace", "labels.csv"]
    # Interrupted after its first block: the partial file stays and the same command resumes it.
    with pytest.raises(KeyboardInterrupt):
        ingest(tmp_path / "UTKFace", out, size=16, workers=1, block_size=2, progress=stop)
    assert (tmp_path / "o.h5.partial").exists()
    summary = ingest(tmp_path / "UTKFace", out, size=16, workers=1, block_size=2)
    assert summary.resumed_from == 2 and summary.n_images == 4 and not (tmp_path / "o.h5.partial").exists()


def test_resume_with_another_source_says_what_differs(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    write_utk_folder(first, n=4)
    write_utk_folder(second, n=4, seed=1)
    out = tmp_path / "o.h5"

    def stop(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest(first, out, size=16, workers=1, block_size=2, progress=stop)
    with pytest.raises(ValueError, match=r"interrupted ingest of .*first \(2 files done\) with other settings "
                                         r"\(source: '.*first' then, '.*second' now\).*add --overwrite"):
        ingest(second, out, size=16, workers=1)
    summary = ingest(second, out, size=16, workers=1, overwrite=True)
    assert summary.resumed_from == 0 and summary.n_images == 4
    with h5py.File(out) as f:
        assert f.attrs["source"] == str(second.resolve())


def test_duplicate_names_in_an_archive_are_ingested_once_and_reported(tmp_path):
    name = "UTKFace/30_0_0_20170101000000001.jpg.chip.jpg"
    other = "UTKFace/50_1_1_20170101000000002.jpg.chip.jpg"
    archive = tmp_path / "dup.tar"
    with tarfile.open(archive, "w") as tf:
        for member, data in ((name, _jpeg(30, 1)), (other, _jpeg(50, 2)), (name, _jpeg(30, 1)),
                             (name, _jpeg(31, 3))):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    summary = ingest(archive, tmp_path / "o.h5", size=16, workers=1, block_size=2)  # copies in two blocks
    assert summary.n_images == 2 and summary.duplicate_names == [name, name]
    reasons = [reason for _, reason in summary.skipped]
    assert "the same bytes as the file already ingested" in reasons[0]
    assert "other bytes than the file already ingested" in reasons[1]
    with h5py.File(tmp_path / "o.h5") as f:
        assert sorted(f["filename"].asstr()[:]) == [name, other]
    zipped = tmp_path / "dup.zip"
    with warnings.catch_warnings(), zipfile.ZipFile(zipped, "w") as zf:
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate, and writes it
        zf.writestr(name, _jpeg(30, 1))
        zf.writestr(name, _jpeg(30, 1))
    assert ingest(zipped, tmp_path / "z.h5", size=16, workers=1).duplicate_names == [name]


@pytest.mark.parametrize(("name", "age"), [("001A02.JPG", 2), ("FGNET/images/001A43a.JPG", 43),
                                           ("082A16b.jpg", 16), ("010a07.jpg", 7)])
def test_parse_fgnet_names(name, age):
    assert parse_fgnet_name(name) == Labels(age=age, gender=UNKNOWN, race=UNKNOWN)


@pytest.mark.parametrize("name", ["30_0_0_20170101000000001.jpg.chip.jpg", "001B02.JPG", "1A02.JPG", "001A2.JPG"])
def test_parse_fgnet_refuses_other_names(name):
    with pytest.raises(LabelParseError, match="FG-NET"):
        parse_fgnet_name(name)


def test_fgnet_folder_ingests_and_evaluates(tmp_path, tiny_checkpoint, capsys):
    import cv2

    folder = tmp_path / "FGNET" / "images"
    folder.mkdir(parents=True)
    ages = {"001A02.JPG": 2, "001A43a.JPG": 43, "001A43b.JPG": 43, "002A10.JPG": 10, "003A61.JPG": 61}
    for i, (name, age) in enumerate(ages.items()):
        cv2.imwrite(str(folder / name), cv2.cvtColor(synthetic_face(age, i, 40), cv2.COLOR_RGB2BGR))
    (folder / "readme.jpg").write_bytes(_jpeg(5, 9))  # not an FG-NET name: skipped, with the reason
    out = tmp_path / "fgnet.h5"
    assert cli(["ingest", str(tmp_path / "FGNET"), "-o", str(out), "--format", "fgnet", "--size", "32",
                "--workers", "1"]) == 0
    assert "skipped images/readme.jpg: file name does not follow FG-NET" in capsys.readouterr().out
    with h5py.File(out) as f:
        got = dict(zip(f["filename"].asstr()[:], f["age"][:].tolist(), strict=True))
        assert got == {f"images/{k}": v for k, v in ages.items()}
        assert (f["gender"][:] == UNKNOWN).all() and (f["race"][:] == UNKNOWN).all()
        assert f.attrs["label_format"] == "fgnet"
    assert cli(["evaluate", str(tiny_checkpoint), "--data", str(out), "--out", str(tmp_path / "eval")]) == 0
    assert "(5 images)" in capsys.readouterr().out
    assert np.isfinite(json.loads((tmp_path / "eval" / "metrics.json").read_text())["age"]["mae"])


def test_a_partial_file_from_before_the_new_settings_still_resumes(tmp_path):
    """Progress records written before label_format and max_file_mb existed hold their default values."""
    write_utk_folder(tmp_path / "UTKFace", n=4)
    out = tmp_path / "o.h5"
    with pytest.raises(KeyboardInterrupt):
        ingest(tmp_path / "UTKFace", out, size=16, workers=1, block_size=2, progress=interrupted)
    record = tmp_path / "o.h5.partial.progress.json"
    state = json.loads(record.read_text())
    for key in ("label_format", "max_file_mb"):
        del state["settings"][key]
    record.write_text(json.dumps(state))
    assert ingest(tmp_path / "UTKFace", out, size=16, workers=1, block_size=2).resumed_from == 2


def test_an_empty_partial_file_left_by_an_older_version_does_not_block(tmp_path):
    """Older versions left OUT.partial behind a run that failed at once (a mistyped source): zero files
    recorded, nothing to resume, so the corrected command starts over instead of refusing."""
    write_utk_folder(tmp_path / "UTKFace", n=4)
    out = tmp_path / "o.h5"
    (tmp_path / "o.h5.partial").write_bytes(b"")
    (tmp_path / "o.h5.partial.progress.json").write_text(json.dumps(
        {"settings": {"source": str(tmp_path / "UTKFcae"), "source_bytes": -1, "size": 16, "labels_csv": "",
                      "align": False}, "n_entries": 0, "n_images": 0, "n_skipped": 0}))
    summary = ingest(tmp_path / "UTKFace", out, size=16, workers=1)
    assert summary.n_images == 4 and summary.resumed_from == 0 and not (tmp_path / "o.h5.partial").exists()


def test_output_folder_that_does_not_exist_yet_is_made(tmp_path):
    # the README's first command on a fresh clone writes `-o work/utk128.h5` before `work/` exists
    source = tmp_path / "faces"
    write_utk_folder(source, n=3)
    out = tmp_path / "work" / "nested" / "o.h5"
    assert cli(["ingest", str(source), "-o", str(out), "--size", "16", "--workers", "1"]) == 0
    with h5py.File(out) as f:
        assert f.attrs["complete"] and len(f["age"]) == 3


def test_a_mistyped_source_leaves_no_output_folder_behind(tmp_path):
    out = tmp_path / "work" / "o.h5"
    with pytest.raises(FileNotFoundError):
        ingest(tmp_path / "missing", out, size=16, workers=1)
    assert not out.parent.exists()
